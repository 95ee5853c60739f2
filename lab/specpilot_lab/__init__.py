"""specpilot's lab: a vLLM simulator, a pod runner, a load generator, a local control plane and the
end-to-end demo. It imports the operator's core (catalog, version table, CRD generator); the
operator never imports it, and its image never contains it."""
