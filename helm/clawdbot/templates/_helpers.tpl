{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "clawdbot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the prefix of every resource name. Truncated so that suffixes like
"-metrics" still fit the 63-character limit of Service names.
*/}}
{{- define "clawdbot.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "clawdbot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels of every resource.
*/}}
{{- define "clawdbot.labels" -}}
helm.sh/chart: {{ include "clawdbot.chart" . }}
{{ include "clawdbot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: clawdbot
{{- end }}

{{/*
Selector labels of the operator pods (immutable once installed: keep them minimal).
*/}}
{{- define "clawdbot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clawdbot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "clawdbot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "clawdbot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: the global registry (when set) is put in
front, an empty tag means the chart's appVersion, a digest wins over the tag. An empty
repository gives "" (the operator reads that as "unsupported").
Usage: include "clawdbot.image" (dict "image" .Values.images.operator "root" $)
*/}}
{{- define "clawdbot.image" -}}
{{- $img := .image }}
{{- if $img.repository }}
{{- $registry := .root.Values.global.imageRegistry | trimSuffix "/" }}
{{- $repo := ternary (printf "%s/%s" $registry $img.repository) $img.repository (ne $registry "") }}
{{- if $img.digest }}
{{- printf "%s@%s" $repo $img.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion $img.tag | toString) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Names of the Services and the objects tied to them. */}}
{{- define "clawdbot.metricsServiceName" -}}
{{- printf "%s-metrics" (include "clawdbot.fullname" .) }}
{{- end }}

{{- define "clawdbot.webhookServiceName" -}}
{{- printf "%s-webhook" (include "clawdbot.fullname" .) }}
{{- end }}

{{- define "clawdbot.discoveryServiceName" -}}
{{- printf "%s-discovery" (include "clawdbot.fullname" .) }}
{{- end }}

{{- define "clawdbot.webhookConfigurationName" -}}
{{- printf "%s-sidecar-injector" (include "clawdbot.fullname" .) }}
{{- end }}

{{- define "clawdbot.servingCertSecretName" -}}
{{- printf "%s-serving-cert" (include "clawdbot.fullname" .) }}
{{- end }}

{{- define "clawdbot.leaderElectionName" -}}
{{- default (include "clawdbot.fullname" .) .Values.leaderElection.name }}
{{- end }}

{{/*
"true" when the serving certificate comes from cert-manager and some server uses it.
*/}}
{{- define "clawdbot.certManager" -}}
{{- if and .Values.webhook.certManager.enabled (or .Values.webhook.enabled .Values.metrics.apiService.enabled) }}true{{ end }}
{{- end }}

{{/*
"true" when the operator issues the serving certificate itself (no cert-manager) for a server
that is on: it keeps it in the Secret clawdbot.servingCertSecretName, shared by the replicas,
and publishes its CA into the webhook configuration and the APIService.
*/}}
{{- define "clawdbot.selfIssuedCert" -}}
{{- if and (not (include "clawdbot.certManager" .)) (or .Values.webhook.enabled .Values.metrics.apiService.enabled .Values.discovery.enabled) }}true{{ end }}
{{- end }}

{{/* The one APIService name of the external metrics API (one per cluster). */}}
{{- define "clawdbot.apiServiceName" -}}
v1beta1.external.metrics.k8s.io
{{- end }}

{{/* The cert-manager Certificate's namespaced name, for the CA-injection annotation. */}}
{{- define "clawdbot.certificateRef" -}}
{{- printf "%s/%s" .Release.Namespace (include "clawdbot.fullname" .) }}
{{- end }}

{{/* DNS names the serving certificate must cover. */}}
{{- define "clawdbot.servingDNSNames" -}}
{{- $ns := .Release.Namespace }}
{{- range $svc := list (include "clawdbot.webhookServiceName" .) (include "clawdbot.metricsServiceName" .) (include "clawdbot.discoveryServiceName" .) }}
- {{ $svc }}.{{ $ns }}.svc
- {{ $svc }}.{{ $ns }}.svc.cluster.local
{{- end }}
{{- end }}

{{/*
What both injection webhooks share (they differ in their selectors only).
*/}}
{{- define "clawdbot.webhookCommon" -}}
admissionReviewVersions: ["v1"]
clientConfig:
  {{- if .Values.webhook.url }}
  url: {{ .Values.webhook.url | quote }}
  {{- else }}
  service:
    name: {{ include "clawdbot.webhookServiceName" . }}
    namespace: {{ .Release.Namespace }}
    path: {{ .Values.webhook.path | quote }}
    port: 443
  {{- end }}
rules:
  - operations: ["CREATE"]
    apiGroups: [""]
    apiVersions: ["v1"]
    resources: ["pods"]
    scope: Namespaced
matchPolicy: Equivalent
sideEffects: None
failurePolicy: {{ .Values.webhook.failurePolicy }}
timeoutSeconds: {{ .Values.webhook.timeoutSeconds }}
reinvocationPolicy: {{ .Values.webhook.reinvocationPolicy }}
{{- end }}
