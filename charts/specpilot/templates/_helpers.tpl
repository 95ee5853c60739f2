{{/* The chart's name (nameOverride wins). */}}
{{- define "specpilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name alone when it already contains the chart's. */}}
{{- define "specpilot.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "specpilot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "specpilot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "specpilot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "specpilot.labels" -}}
helm.sh/chart: {{ include "specpilot.chart" . }}
{{ include "specpilot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "specpilot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "specpilot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* ClusterRole, ClusterRoleBinding and the per-namespace Roles and RoleBindings. */}}
{{- define "specpilot.rbacName" -}}
{{- printf "%s-operator" (include "specpilot.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The webhook's Service, certificate Secret and ClusterRole. */}}
{{- define "specpilot.webhookName" -}}
{{- printf "%s-webhook" (include "specpilot.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ValidatingWebhookConfiguration; its webhook is named validate.<this> (3+ DNS labels). */}}
{{- define "specpilot.webhookConfigurationName" -}}
{{- printf "%s.specpilot.io" (include "specpilot.fullname" .) }}
{{- end }}

{{/* Where cert-manager's Secret is mounted when webhook.certManager.enabled. */}}
{{- define "specpilot.webhookCertDir" -}}
/etc/specpilot/webhook
{{- end }}

{{/* The peering object (ClusterKopfPeering or KopfPeering) when replicas > 1. */}}
{{- define "specpilot.peeringName" -}}
{{- include "specpilot.fullname" . }}
{{- end }}

{{/*
Least-privilege rules; equal to manifests/rbac/cluster-role.yaml for the cluster-wide scope.
Called with (dict "cluster" true|false): a namespaced Role omits the cluster-scoped resources.
*/}}
{{- define "specpilot.rules" -}}
# The resources it reconciles; it writes only their status (never spec or metadata).
- apiGroups: ["specpilot.io"]
  resources: ["speculativeinferences"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["specpilot.io"]
  resources: ["speculativeinferences/status"]
  verbs: ["get", "patch"]
# What it renders, applied server-side under the field manager "specpilot".
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "create", "patch"]
# The Pods of a Deployment whose rollout is not complete: why it does not progress (read
# only then, by the Deployment's selector; never get, watch or anything on pods/log).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Events explaining each transition.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
# kopf peering: one active replica.
- apiGroups: ["kopf.dev"]
  resources: {{ if .cluster }}["clusterkopfpeerings", "kopfpeerings"]{{ else }}["kopfpeerings"]{{ end }}
  verbs: ["get", "list", "watch", "patch"]
{{- end }}

{{/* The operator's arguments after `specpilot run`. */}}
{{- define "specpilot.args" -}}
{{- if eq (int .Values.replicas) 1 }}
- --standalone
{{- else }}
- --peering
- {{ include "specpilot.peeringName" . }}
{{- end }}
{{- range .Values.watchNamespaces }}
- -n
- {{ . }}
{{- end }}
{{- with .Values.prometheusUrl }}
- --prometheus-url
- {{ . | quote }}
{{- end }}
{{- range .Values.allowedPrometheusUrls }}
- --allowed-prometheus-url
- {{ . | quote }}
{{- end }}
{{- with (.Values.control | default dict).maxChangesPerHour }}
- --max-changes-per-hour
- {{ . | quote }}
{{- end }}
{{- $pod := .Values.podPolicy | default dict }}
{{- if $pod.allowHostPath }}
- --pod-allow-host-path
{{- end }}
{{- if eq (toString $pod.allowServiceAccount) "false" }}
- --pod-refuse-service-account
{{- end }}
{{- if eq (toString $pod.allowSecretEnv) "false" }}
- --pod-refuse-secret-env
{{- end }}
{{- with $pod.maxGPUsPerResource }}
- --max-gpus-per-resource
- {{ . | quote }}
{{- end }}
{{- if .Values.webhook.enabled }}
- --webhook-port
- {{ .Values.webhook.port | quote }}
- --webhook-service
- {{ printf "%s/%s" .Release.Namespace (include "specpilot.webhookName" .) }}
- --webhook-configuration
- {{ include "specpilot.webhookConfigurationName" . }}
{{- if .Values.webhook.certManager.enabled }}
- --webhook-cert
- {{ include "specpilot.webhookCertDir" . }}/tls.crt
- --webhook-key
- {{ include "specpilot.webhookCertDir" . }}/tls.key
- --webhook-ca
- {{ include "specpilot.webhookCertDir" . }}/ca.crt
{{- end }}
{{- end }}
{{- end }}
