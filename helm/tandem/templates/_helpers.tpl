{{/* The chart name. */}}
{{- define "tandem.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A release-unique name for the operator's objects. */}}
{{- define "tandem.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "tandem.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "tandem.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels of every object the chart renders. */}}
{{- define "tandem.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tandem.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tandem
{{- end }}

{{/* The operator's labels and its pods' selector. */}}
{{- define "tandem.operatorLabels" -}}
{{ include "tandem.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "tandem.operatorSelector" -}}
app.kubernetes.io/name: {{ include "tandem.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* An ingress rule: the operator's pods, wherever they run, may scrape the metrics port
(the autoscaler reads the router and the workers; the operator's pods are labelled by Helm). */}}
{{- define "tandem.operatorScrapeRule" -}}
- ports:
    - {port: 9090, protocol: TCP}
  from:
    - podSelector:
        matchLabels:
          {{- include "tandem.operatorSelector" . | nindent 10 }}
      namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: {{ .Release.Namespace }}}
{{- end }}

{{- define "tandem.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "tandem.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image every component runs. */}}
{{- define "tandem.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The namespaces the operator watches (when not cluster-wide), as a JSON list. */}}
{{- define "tandem.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- toJson (uniq .Values.operator.watchNamespaces) }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/* The ClusterKopfPeering the operator replicas share. */}}
{{- define "tandem.peeringName" -}}
{{- printf "%s-operator" (include "tandem.fullname" .) }}
{{- end }}

{{/* What the operator may do in a namespace it watches (Role or ClusterRole rules). */}}
{{- define "tandem.operatorRules" -}}
- apiGroups: [tandem.dev]
  resources: [tandemdeployments]
  verbs: [get, list, watch, patch, update]
- apiGroups: [tandem.dev]
  resources: [tandemdeployments/status]
  verbs: [get, patch, update]
- apiGroups: [tandem.dev]
  resources: [tandemdeployments/finalizers]
  verbs: [update]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, create, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps, serviceaccounts]
  verbs: [get, list, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
# Secrets: the worker token of each TandemDeployment is created once, never patched or listed;
# `get` tells whether it exists and whether the router's API-key and TLS Secrets exist yet.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
# Held so that the operator may grant it to each router (RBAC forbids granting more than one has).
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
{{- end }}
