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

{{- /* The namespaces watched without allNamespaces: the list given, else the release namespace. */ -}}
{{- define "pipeline-operator.namespaces" -}}
{{- toJson (.Values.watch.namespaces | default (list .Release.Namespace)) -}}
{{- end }}

{{- /* The Secret the API's certificate is in ("" without TLS). */ -}}
{{- define "pipeline-operator.tlsSecret" -}}
{{- if .Values.api.tls.secretName -}}
{{ .Values.api.tls.secretName }}
{{- else if .Values.api.tls.certManager.enabled -}}
pipeline-operator-tls
{{- end -}}
{{- end }}
