{{- define "pipeline-operator.labels" -}}
app.kubernetes.io/name: pipeline-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pipeline-operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "pipeline-operator.selector" -}}
app.kubernetes.io/name: pipeline-operator
app.kubernetes.io/component: operator
{{- end }}

{{- define "pipeline-operator.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
