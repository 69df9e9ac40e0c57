{{/* The release's name for its objects: the release name, or release-chart when they differ. */}}
{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* What selects this release's pods (never changes between upgrades). */}}
{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "portcullis.podSelectorLabels" -}}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* HTTP/3 is on: the pod listens on UDP and the Service carries UDP 443. */}}
{{- define "portcullis.http3" -}}
{{- if eq (toString .Values.proxyConfig.spec.codecType) "http3" -}}true{{- end -}}
{{- end -}}

{{/* Leader-election Lease and the ConfigMap of last good versions, named per release. */}}
{{- define "portcullis.leaseName" -}}
{{- printf "%s-leader" (include "portcullis.fullname" .) -}}
{{- end -}}
{{- define "portcullis.lastGoodName" -}}
{{- printf "%s-last-good" (include "portcullis.fullname" .) -}}
{{- end -}}
{{/* The ConfigMap through which replicas share sign-outs. */}}
{{- define "portcullis.signedOutName" -}}
{{- printf "%s-signed-out" (include "portcullis.fullname" .) -}}
{{- end -}}
{{/* The Secret of the session key and the assertion signing key. */}}
{{- define "portcullis.signInSecretName" -}}
{{- .Values.signIn.existingSecret | default (printf "%s-sign-in" (include "portcullis.fullname" .)) -}}
{{- end -}}

{{/* The process's own termination budget: the grace period less the preStop sleep. */}}
{{- define "portcullis.processGrace" -}}
{{- $grace := int .Values.terminationGracePeriodSeconds -}}
{{- $sleep := int .Values.preStopSleepSeconds -}}
{{- if lt (sub $grace $sleep) 5 -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds (%d) by at least 5 s: the process needs time to drain and exit" $grace $sleep) -}}
{{- end -}}
{{- sub $grace $sleep -}}
{{- end -}}
