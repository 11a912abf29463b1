{{/* Common names and labels. */}}
{{- define "therapy-rlhf.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "therapy-rlhf.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "therapy-rlhf.labels" -}}
app.kubernetes.io/name: {{ include "therapy-rlhf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "therapy-rlhf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "therapy-rlhf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "therapy-rlhf.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "therapy-rlhf.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespaces a namespaced install watches. */}}
{{- define "therapy-rlhf.watchNamespaces" -}}
{{- if .Values.watch.namespaces -}}
{{- join "," .Values.watch.namespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* RBAC rules the operator needs where runs live; each says why. */}}
{{- define "therapy-rlhf.runRules" }}
# The runs themselves: kopf lists and watches them, and patches their
# annotations (handler progress), finalizer and status.
- apiGroups: ["rlhf.therapy.dev"]
  resources: ["therapyrlhfruns"]
  verbs: ["get", "list", "watch", "patch", "update"]
# Jobs and the ConfigMap name the run as owner with blockOwnerDeletion,
# which the API server allows only to those who may update its finalizers.
- apiGroups: ["rlhf.therapy.dev"]
  resources: ["therapyrlhfruns/finalizers"]
  verbs: ["update"]
# Status is a subresource: writing phase, conditions and round history.
- apiGroups: ["rlhf.therapy.dev"]
  resources: ["therapyrlhfruns/status"]
  verbs: ["get", "patch", "update"]
# The training Jobs: listed by label to observe attempts, created per step.
# No delete: owner references let the garbage collector remove them.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "create"]
# A failed Job's pods, read-only: their termination message holds the job's
# one-line "error: ..." (or OOMKilled and the exit code), which becomes the
# run's Failed condition and Event. Never created, changed or deleted.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
# The frozen run manifest mounted into every Job; patched back if edited.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
# The run's S3 credentials Secret: the operator reads it to poll rating
# coverage and write gate.json with the same identity the Jobs use.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events on every transition and failure (kubectl describe trr).
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
