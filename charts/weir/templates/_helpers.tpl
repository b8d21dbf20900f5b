{{/* Full name of the release's objects: the release name, prefixed unless it holds "weir". */}}
{{- define "weir.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "weir.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "weir.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the operator pods (never the workers: theirs say weir-worker). */}}
{{- define "weir.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "weir.labels" -}}
{{ include "weir.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The operator image; the workers use it too unless workerImage is set. */}}
{{- define "weir.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "weir.workerImage" -}}
{{- default (include "weir.image" .) .Values.workerImage -}}
{{- end -}}

{{/*
The operator's permissions in each namespace it watches: operator/src/rbac.rs API_CALLS
(except the Lease, see leader-election rules below) plus GRANTED_TO_WORKERS (configmaps
get/update, secrets get: Kubernetes lets the operator create the workers' Role only with
permissions it holds itself). operator/tests/chart.rs renders the chart and fails unless these
rules are exactly that list, so keep them in step with rbac.rs.
*/}}
{{- define "weir.operatorRules" -}}
- apiGroups: [weir.dev]
  resources: [streamjobs]
  verbs: [get, list, watch, patch]
- apiGroups: [weir.dev]
  resources: [streamjobs/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, update, deletecollection]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [""]
  resources: [serviceaccounts, services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* Leader election, in the release namespace only (POD_NAMESPACE). */}}
{{- define "weir.leaderElectionRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
{{- end -}}

{{/* The label naming a worker series' StreamJob: set by the worker PodMonitor, grouped by in
the PrometheusRule and the dashboard. */}}
{{- define "weir.jobLabel" -}}
streamjob
{{- end -}}
