{{/*
Names and labels. What the chart gives `gm server --discovery kubernetes` (environment, ports,
probes, RBAC) follows the interface agreed in issue 12 between the chart, the image and gm.
*/}}

{{/*
The name of the StatefulSet and of everything else: the release name when it contains "gm",
else "<release>-gm". Never truncated (a truncated name could collide with another release's):
a name over 52 characters fails, since the StatefulSet's controller-revision-hash label
("<name>-<10 characters>") must fit in 63, and pod names "<name>-<ordinal>" with them.
*/}}
{{- define "gm.fullname" -}}
{{- $name := .Values.fullnameOverride -}}
{{- if not $name -}}
{{- $name = ternary .Release.Name (printf "%s-gm" .Release.Name) (contains "gm" .Release.Name) -}}
{{- end -}}
{{- if gt (len $name) 52 -}}
{{- fail (printf "the name %q is %d characters long, at most 52 fit: use a shorter release name or set fullnameOverride" $name (len $name)) -}}
{{- end -}}
{{- $name -}}
{{- end }}

{{/* The headless Service: stable pod DNS names, {pod}.{service}.{namespace}.svc. */}}
{{- define "gm.headlessName" -}}
{{- include "gm.fullname" . }}-headless
{{- end }}

{{- define "gm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end }}

{{- define "gm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end }}

{{/*
The labels that select this release's gm pods: the pod selector `gm server` is given, the
Services', the PodDisruptionBudget's and the spread constraints'. Nothing but the gm pods may
carry both (the helm test pod has another name).
*/}}
{{- define "gm.selectorLabels" -}}
app.kubernetes.io/name: gm
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gm.podSelector" -}}
app.kubernetes.io/name=gm,app.kubernetes.io/instance={{ .Release.Name }}
{{- end }}

{{/* Labels on every object but the helm test pod. */}}
{{- define "gm.labels" -}}
{{ include "gm.selectorLabels" . }}
app.kubernetes.io/component: server
{{ include "gm.commonLabels" . }}
{{- end }}

{{/* The labels the helm test pod shares with the rest. */}}
{{- define "gm.commonLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: gm
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/*
Labels from values, (list $ map), as YAML lines: those the chart sets itself are left out, so a
value can never change what selects the gm pods.
*/}}
{{- define "gm.extraLabels" -}}
{{- $own := include "gm.labels" (index . 0) | fromYaml -}}
{{- $lines := list -}}
{{- range $key, $value := index . 1 -}}
{{- if not (hasKey $own $key) -}}
{{- $lines = append $lines (printf "%s: %s" $key (quote $value)) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end }}
