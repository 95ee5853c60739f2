-- Argo CD health check for specpilot.io/SpeculativeInference, from the operator's conditions.
-- Install: argocd-cm data key "resource.customizations.health.specpilot.io_SpeculativeInference"
-- (see docs/gitops.md). Tested with Lua 5.1, the dialect Argo CD runs (tests/gitops/).
local hs = {}
local function condition(conditions, wanted)
  for _, c in ipairs(conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the specpilot operator to reconcile"
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
local conditions = obj.status.conditions
local invalid = condition(conditions, "Invalid")
if invalid ~= nil and invalid.status == "True" then
  hs.status = "Degraded"
  hs.message = "Invalid spec: " .. (invalid.message or invalid.reason or "")
  return hs
end
local degraded = condition(conditions, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = degraded.message or degraded.reason or "Degraded"
  return hs
end
local ready = condition(conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  local speculation = condition(conditions, "SpeculationActive")
  if speculation ~= nil then
    hs.message = "Ready; speculation " .. (speculation.status == "True" and "on" or "off")
      .. " (" .. (speculation.reason or "") .. ")"
  else
    hs.message = "Ready"
  end
  return hs
end
hs.status = "Progressing"
if ready ~= nil then
  hs.message = ready.message or ready.reason or "Waiting for the Deployments"
else
  hs.message = "Waiting for the Deployments"
end
return hs
