{{/*
Expand the name of the chart.
*/}}
{{- define "keychain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "keychain.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "keychain.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "keychain.labels" -}}
helm.sh/chart: {{ include "keychain.chart" . }}
{{ include "keychain.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keychain
{{- end }}

{{/*
Selector labels
*/}}
{{- define "keychain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keychain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of the server pods. The component label keeps the migration
Job's pod out of the Deployment's, Service's, PDB's and NetworkPolicy's
selectors.
*/}}
{{- define "keychain.serverSelectorLabels" -}}
{{ include "keychain.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "keychain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keychain.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The migration Job's service account: see migration.serviceAccountName in values.yaml.
*/}}
{{- define "keychain.migrationServiceAccountName" -}}
{{- if .Values.migration.serviceAccountName }}
{{- .Values.migration.serviceAccountName }}
{{- else if .Values.serviceAccount.create }}
{{- "default" }}
{{- else }}
{{- include "keychain.serviceAccountName" . }}
{{- end }}
{{- end }}

{{/*
The image reference: repository:tag, or repository@digest when a digest is given.
*/}}
{{- define "keychain.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The Secret the server reads KEYCHAIN_DATABASE_URL, KEYCHAIN_ENCRYPTION_KEYS,
KEYCHAIN_API_TOKENS and KEYCHAIN_TOKEN_SIGNING_KEYS from: the operator's, or the
one this chart makes.
*/}}
{{- define "keychain.secretName" -}}
{{- default (include "keychain.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
The Secret the migration hook reads KEYCHAIN_DATABASE_URL from. A pre-install
hook runs before the chart's ordinary resources exist, so unless the operator
brings a Secret the hook gets its own, itself a hook (see migration-secret.yaml).
*/}}
{{- define "keychain.migrationSecretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- printf "%s-migration" (include "keychain.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Non-secret settings as KEYCHAIN_* variables; the ConfigMap holds them and the
migration Job (which runs before the ConfigMap exists) sets them inline.
Numbers go through int64 so large ones do not render as 2.592e+06.
*/}}
{{- define "keychain.configData" -}}
KEYCHAIN_HOST: "0.0.0.0"
KEYCHAIN_PORT: "8082"
KEYCHAIN_SCHEMA: {{ .Values.config.schema | quote }}
KEYCHAIN_SWEEP_INTERVAL_SECONDS: {{ .Values.config.sweepIntervalSeconds | int64 | quote }}
KEYCHAIN_SWEEP_BATCH_SIZE: {{ .Values.config.sweepBatchSize | int64 | quote }}
KEYCHAIN_DEFAULT_TTL_SECONDS: {{ .Values.config.defaultTtlSeconds | int64 | quote }}
KEYCHAIN_MAX_TTL_SECONDS: {{ .Values.config.maxTtlSeconds | int64 | quote }}
KEYCHAIN_MAX_BODY_BYTES: {{ .Values.config.maxBodyBytes | int64 | quote }}
KEYCHAIN_LOG_FORMAT: {{ .Values.config.logFormat | quote }}
KEYCHAIN_LOG_LEVEL: {{ .Values.config.logLevel | quote }}
KEYCHAIN_DB_POOL_SIZE: {{ .Values.config.dbPoolSize | int64 | quote }}
{{- with .Values.config.apiTokenLimits }}
KEYCHAIN_API_TOKEN_LIMITS: {{ . | quote }}
{{- end }}
KEYCHAIN_EXECUTION_TOKEN_TTL_SECONDS: {{ .Values.config.executionTokenTtlSeconds | int64 | quote }}
KEYCHAIN_AUDIT_READS: {{ .Values.config.auditReads | toString | quote }}
{{- /* Seconds as a float (0.5 is fine); a whole number renders without a point. */}}
KEYCHAIN_AUDIT_FLUSH_SECONDS: {{ .Values.config.auditFlushSeconds | toString | quote }}
KEYCHAIN_MAX_TOKEN_DATA_BYTES: {{ .Values.config.maxTokenDataBytes | int64 | quote }}
KEYCHAIN_MAX_TOKEN_DATA_DEPTH: {{ .Values.config.maxTokenDataDepth | int64 | quote }}
KEYCHAIN_MAX_TOKEN_DATA_ITEMS: {{ .Values.config.maxTokenDataItems | int64 | quote }}
KEYCHAIN_MEMORY_TIER_MAX_ENTRIES: {{ .Values.config.memoryTierMaxEntries | int64 | quote }}
KEYCHAIN_MEMORY_TIER_MAX_BYTES: {{ .Values.config.memoryTierMaxBytes | int64 | quote }}
KEYCHAIN_HIT_FLUSH_SECONDS: {{ .Values.config.hitFlushSeconds | toString | quote }}
KEYCHAIN_SERVE_FROM_MEMORY_DURING_OUTAGE: {{ .Values.config.serveFromMemoryDuringOutage | toString | quote }}
KEYCHAIN_LOG_READS: {{ .Values.config.logReads | toString | quote }}
KEYCHAIN_DRAIN_SECONDS: {{ .Values.config.drainSeconds | int64 | quote }}
# Only local runs use the data directory; point it at the writable emptyDir.
KEYCHAIN_DATA_DIR: "/tmp/keychain"
{{- end }}

{{/*
The secret settings as Secret data (only those given; an empty one would
override nothing useful and hide a mistake).
*/}}
{{- define "keychain.secretData" -}}
{{- with .Values.secrets.databaseUrl }}
KEYCHAIN_DATABASE_URL: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secrets.encryptionKeys }}
KEYCHAIN_ENCRYPTION_KEYS: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secrets.apiTokens }}
KEYCHAIN_API_TOKENS: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secrets.tokenSigningKeys }}
KEYCHAIN_TOKEN_SIGNING_KEYS: {{ . | b64enc | quote }}
{{- end }}
{{- end }}

{{/*
Pod-level pieces shared by the server and the migration Job.
*/}}
{{- define "keychain.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
# The server never calls the Kubernetes API: no token in the pod.
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The writable /tmp: the root filesystem is read-only.
*/}}
{{- define "keychain.tmpVolume" -}}
- name: tmp
  emptyDir:
    {{- with .Values.tmpVolume.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}

{{/*
"true" when extraEnv sets the variable named by the second argument, else "".
Usage: include "keychain.extraEnvHas" (list . "KEYCHAIN_DATABASE_URL")
*/}}
{{- define "keychain.extraEnvHas" -}}
{{- $names := list }}
{{- range (index . 0).Values.extraEnv }}
{{- $names = append $names .name }}
{{- end }}
{{- if has (index . 1) $names }}true{{ end }}
{{- end }}

{{/*
Where the server finds its TLS certificate and key (tls.existingSecret), and
the database's CA (databaseCA.existingSecret). Read-only secret volumes: 0440
with the pod's fsGroup, so only the server's group reads the key.
*/}}
{{- define "keychain.tlsDir" -}}/etc/keychain/tls{{- end }}
{{- define "keychain.databaseCADir" -}}/etc/keychain/database-ca{{- end }}

{{/*
A probe from values, with scheme HTTPS when the server serves TLS (the kubelet
does not verify the certificate, so the pod IP need not be in it).
Usage: include "keychain.probe" (list .Values.startupProbe .)
*/}}
{{- define "keychain.probe" -}}
{{- $probe := deepCopy (index . 0) }}
{{- if and (index . 1).Values.tls.enabled $probe.httpGet }}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/*
The database CA (databaseCA.existingSecret) in the server and the migration
Job: the env variable, the mount and the volume. Include only when it is set.
*/}}
{{- define "keychain.databaseCAEnv" -}}
# asyncpg checks the database's certificate against this file (sslmode=verify-full).
- name: PGSSLROOTCERT
  value: {{ printf "%s/%s" (include "keychain.databaseCADir" .) .Values.databaseCA.key | quote }}
{{- end }}

{{- define "keychain.databaseCAMount" -}}
- name: database-ca
  mountPath: {{ include "keychain.databaseCADir" . }}
  readOnly: true
{{- end }}

{{- define "keychain.databaseCAVolume" -}}
- name: database-ca
  secret:
    secretName: {{ .Values.databaseCA.existingSecret }}
    items:
      - key: {{ .Values.databaseCA.key }}
        path: {{ .Values.databaseCA.key }}
{{- end }}
