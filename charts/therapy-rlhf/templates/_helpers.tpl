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
# The runs: kopf lists and watches them, and patches their annotations (handler
# progress; no finalizer is ever added) and their status subresource.
- apiGroups: ["rlhf.therapy.dev"]
  resources: ["therapyrlhfruns"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["rlhf.therapy.dev"]
  resources: ["therapyrlhfruns/status"]
  verbs: ["patch"]
# Jobs and the ConfigMap name the run as owner with blockOwnerDeletion, which the
# API server's admission allows only to those who may update the run's finalizers.
- apiGroups: ["rlhf.therapy.dev"]
  resources: ["therapyrlhfruns/finalizers"]
  verbs: ["update"]
# The training Jobs: listed by label to observe attempts, created per step.
# No delete: owner references let the garbage collector remove them.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "create"]
# The pods of a Job, read-only: a failed pod's termination message is the job's
# one-line error, a succeeded one's the digests of what it wrote.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# The frozen run manifest mounted into every Job: created, read before each Job
# starts, and patched back if someone edited it.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
# The run's S3 credentials Secret (only one that opted in is ever used): read to poll
# rating coverage and write gate.json with the identity the Jobs use. With
# security.credentialsSecrets, no other Secret can be read.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
  {{- with (include "therapy-rlhf.credentialsSecrets" .) }}
  resourceNames: {{ . }}
  {{- end }}
# Events on every transition and failure (kubectl describe trr).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* The allow-listed credentials Secrets as a JSON list, or nothing when runs opt in by label. */}}
{{- define "therapy-rlhf.credentialsSecrets" -}}
{{- if .Values.security.credentialsSecrets -}}
{{- $names := .Values.security.credentialsSecrets -}}
{{- if .Values.jobDefaults.credentialsSecret -}}
{{- $names = append $names .Values.jobDefaults.credentialsSecret | uniq -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}
{{- end -}}
