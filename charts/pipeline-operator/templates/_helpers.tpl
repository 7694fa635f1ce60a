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

{{- /* The repository in values.yaml: a name that no registry serves yet (the image is built with `make image`). */ -}}
{{- define "pipeline-operator.unpublishedRepository" -}}
ghcr.io/pipeline-operator/pipeline-operator
{{- end }}

{{- /* The operator's image, repository:tag (the tag defaults to the chart's appVersion). Refuses the
unpublished default repository, so an install never waits on an image that cannot be pulled. */ -}}
{{- define "pipeline-operator.image" -}}
{{- $unpublished := include "pipeline-operator.unpublishedRepository" . -}}
{{- if eq .Values.image.repository $unpublished -}}
{{- fail (printf "image.repository is %s, which no registry serves yet: build the image with `make image`, load or push it (see README, Installing), and set image.repository (and image.tag), e.g. --set image.repository=localhost/pipeline-operator --set image.tag=%s after `kind load image-archive dist/image/pipeline-operator-%s.tar`" $unpublished .Chart.AppVersion .Chart.AppVersion) -}}
{{- end -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- /* The default image of pipelines whose spec gives none: pipelineImage, else the operator's own. */ -}}
{{- define "pipeline-operator.pipelineImage" -}}
{{- .Values.pipelineImage | default (include "pipeline-operator.image" .) -}}
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

{{- /* The number of operator replicas: replicaCount, else 2 with PostgreSQL and 1 with SQLite. Every replica
serves the HTTP API's reads from the event store, and a standby that takes the Lease over carries on with the
history it finds there: only PostgreSQL is one store for pods on different nodes. SQLite is one pod's file on a
ReadWriteOnce volume, so more than one replica with it is refused. */ -}}
{{- define "pipeline-operator.replicas" -}}
{{- $postgresql := .Values.eventStore.postgresql.url -}}
{{- $replicas := ternary 2 1 (and (ne $postgresql "") (eq .Values.backend "kubernetes")) -}}
{{- if not (kindIs "invalid" .Values.replicaCount) -}}
{{- $replicas = int .Values.replicaCount -}}
{{- end -}}
{{- if and (gt $replicas 1) (not $postgresql) -}}
{{- fail (printf "replicaCount=%d needs the PostgreSQL event store: with SQLite (the default) the monitor events are a file in one pod's volume, which other replicas can neither share nor serve; set eventStore.postgresql.url (and eventStore.postgresql.passwordSecret.name), or replicaCount=1" $replicas) -}}
{{- end -}}
{{- if and (gt $replicas 1) (ne .Values.backend "kubernetes") -}}
{{- fail (printf "replicaCount=%d needs backend=kubernetes: with backend=%s the pipelines are processes inside the leader's pod, which a standby taking over would start a second time; set replicaCount=1" $replicas .Values.backend) -}}
{{- end -}}
{{- $replicas -}}
{{- end }}

{{- /* The PersistentVolumeClaim of the SQLite event store ("" with PostgreSQL or an emptyDir). Only one replica
ever mounts it (ReadWriteOnce): more need PostgreSQL, which makes no claim. */ -}}
{{- define "pipeline-operator.eventStoreClaim" -}}
{{- if and .Values.eventStore.persistent (not .Values.eventStore.postgresql.url) -}}
pipeline-operator-data
{{- end -}}
{{- end }}
