{{/* The chart's name. */}}
{{- define "evmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name. */}}
{{- define "evmesh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "evmesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "evmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "evmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "evmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "evmesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The configuration evmesh starts with: the user's `config` with the listen addresses the mode
calls for (all interfaces for a standalone broker; loopback for a sidecar, but for the admin
port, which the kubelet probes).
*/}}
{{- define "evmesh.config" -}}
{{- $host := "0.0.0.0" }}
{{- $adminHost := "0.0.0.0" }}
{{- if eq .Values.mode "sidecar" }}
{{- $host = "127.0.0.1" }}
{{- $adminHost = .Values.sidecar.adminHost }}
{{- end }}
{{- $server := dict "http" (printf "%s:%v" $host .Values.ports.http) "admin" (printf "%s:%v" $adminHost .Values.ports.admin) "tcp" (printf "%s:%v" $host .Values.ports.tcp) }}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $_ := set $config "server" (merge $server (get $config "server" | default dict)) }}
{{- toYaml $config }}
{{- end }}

{{/*
The evmesh container. Standalone brokers and sidecars use the same one; add it to your own
pod as a sidecar with:
  containers:
    - name: my-app
      ...
    {{- include "evmesh.sidecarContainer" . | nindent 4 }}
and the volumes from "evmesh.sidecarVolumes".
*/}}
{{- define "evmesh.container" -}}
- name: evmesh
  image: {{ include "evmesh.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - --log-format
    - {{ .Values.logFormat | quote }}
    - serve
    - --config
    - /etc/evmesh/evmesh.yaml
    - --data-dir
    - /var/lib/evmesh
    {{- if eq .Values.mode "sidecar" }}
    - --profile
    - sidecar
    - --upstream
    - {{ required "sidecar.upstream is required in sidecar mode (http://HOST:PORT of an evmesh broker, or kafka://HOST:PORT)" .Values.sidecar.upstream | quote }}
    {{- end }}
  {{- with .Values.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: http
      containerPort: {{ .Values.ports.http }}
      protocol: TCP
    - name: admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
    - name: tcp
      containerPort: {{ .Values.ports.tcp }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    initialDelaySeconds: {{ .Values.livenessProbe.initialDelaySeconds }}
    periodSeconds: {{ .Values.livenessProbe.periodSeconds }}
    failureThreshold: {{ .Values.livenessProbe.failureThreshold }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
    initialDelaySeconds: {{ .Values.readinessProbe.initialDelaySeconds }}
    periodSeconds: {{ .Values.readinessProbe.periodSeconds }}
    failureThreshold: {{ .Values.readinessProbe.failureThreshold }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: config
      mountPath: /etc/evmesh
      readOnly: true
    - name: data
      mountPath: /var/lib/evmesh
{{- end }}

{{- define "evmesh.sidecarContainer" -}}
{{ include "evmesh.container" . }}
{{- end }}

{{/* The volumes the sidecar container mounts. */}}
{{- define "evmesh.sidecarVolumes" -}}
- name: config
  configMap:
    name: {{ include "evmesh.fullname" . }}
- name: data
  {{- toYaml .Values.sidecar.dataVolume | nindent 2 }}
{{- end }}
