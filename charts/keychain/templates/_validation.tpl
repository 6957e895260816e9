{{/*
Fail the install or upgrade early, with a message that says what to set,
rather than let pods crash-loop on a bad setting. Messages never echo a secret
value (CI logs are not a safe place for one); they name the field, and at most
a key id or token name.
*/}}
{{- define "keychain.validate" -}}
{{- $hint := "or name a Secret you made in secrets.existingSecret (keys KEYCHAIN_DATABASE_URL, KEYCHAIN_ENCRYPTION_KEYS, KEYCHAIN_API_TOKENS, and KEYCHAIN_TOKEN_SIGNING_KEYS once an issuer token is configured)" }}
{{- $extraEnvNames := list }}
{{- $tokenNames := list }}
{{- range .Values.extraEnv }}
{{- $extraEnvNames = append $extraEnvNames .name }}
{{- end }}

{{- /* An existing Secret cannot be read at template time: values.yaml and
NOTES.txt list the keys it must hold, and the server refuses to start without them. */}}
{{- if not .Values.secrets.existingSecret }}

{{- /* Database URL: given inline, or via extraEnv (e.g. a secretKeyRef to the database operator's Secret). */}}
{{- $url := .Values.secrets.databaseUrl }}
{{- if and (not $url) (not (has "KEYCHAIN_DATABASE_URL" $extraEnvNames)) }}
{{- fail (printf "\n\nkeychain: no database URL. Set secrets.databaseUrl to a postgresql:// URL, %s, or set KEYCHAIN_DATABASE_URL in extraEnv." $hint) }}
{{- end }}
{{- /* The schemes app/db/engine.py async_url accepts; query parameters such as ?sslmode=require pass through to the app. */}}
{{- if and $url (not (regexMatch "^(postgres|postgresql|postgresql\\+asyncpg)://" $url)) }}
{{- fail "\n\nkeychain: secrets.databaseUrl must start with postgresql://, postgres:// or postgresql+asyncpg:// (value not shown)." }}
{{- end }}
{{- /* asyncpg checks the database's certificate only against PGSSLROOTCERT's file. */}}
{{- if and (regexMatch "[?&]sslmode=verify-(ca|full)(&|$)" $url) (not .Values.databaseCA.existingSecret) (not (has "PGSSLROOTCERT" $extraEnvNames)) }}
{{- fail "\n\nkeychain: secrets.databaseUrl asks for sslmode=verify-full or verify-ca but no CA is given: set databaseCA.existingSecret to a Secret holding the database server's CA certificate (key databaseCA.key, default ca.crt)." }}
{{- end }}

{{- /* Encryption keys: "id:<base64 of 32 bytes>,...", as app/crypto.py parses them. */}}
{{- $keys := .Values.secrets.encryptionKeys }}
{{- if not $keys }}
{{- fail (printf "\n\nkeychain: no encryption key. Set secrets.encryptionKeys to \"k1:<base64 of 32 random bytes>\" (make one with: python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'), %s." $hint) }}
{{- end }}
{{- include "keychain.validateKeyRing" (dict "field" "secrets.encryptionKeys" "keys" $keys) }}

{{- /* Execution-token signing keys: the same format, optional until an issuer token needs them. */}}
{{- $signingKeys := .Values.secrets.tokenSigningKeys }}
{{- include "keychain.validateKeyRing" (dict "field" "secrets.tokenSigningKeys" "keys" $signingKeys) }}

{{- /* API tokens: "name:role:token,..." (the token itself may contain ':', as in sha256:<hex>). */}}
{{- $tokens := .Values.secrets.apiTokens }}
{{- if not $tokens }}
{{- fail (printf "\n\nkeychain: no API tokens. Set secrets.apiTokens to \"<name>:<worker|issuer|admin>:<token>,...\", %s. Without tokens the API would be open to anyone in the cluster." $hint) }}
{{- end }}
{{- range $i, $entry := splitList "," $tokens }}
{{- $entry = trim $entry }}
{{- if $entry }}
{{- $parts := splitn ":" 3 $entry }}
{{- $tokenNames = append $tokenNames $parts._0 }}
{{- if or (not $parts._0) (not $parts._2) }}
{{- fail (printf "\n\nkeychain: secrets.apiTokens entry %d must look like \"<name>:<worker|issuer|admin>:<token>\" (value not shown)." (add1 $i)) }}
{{- end }}
{{- if not (has $parts._1 (list "worker" "issuer" "admin")) }}
{{- fail (printf "\n\nkeychain: secrets.apiTokens token %q needs the role worker, issuer or admin as its second field (value not shown)." $parts._0) }}
{{- end }}
{{- /* The server refuses to start with an issuer but nothing to sign its execution tokens with (app/asgi.py). */}}
{{- if and (eq $parts._1 "issuer") (not $signingKeys) (not (has "KEYCHAIN_TOKEN_SIGNING_KEYS" $extraEnvNames)) }}
{{- fail (printf "\n\nkeychain: secrets.apiTokens token %q has the role issuer, which mints execution tokens, but secrets.tokenSigningKeys is empty. Set it to \"s1:<base64 of 32 random bytes>\" (make one with: python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'; not one of the encryption keys), or set KEYCHAIN_TOKEN_SIGNING_KEYS in extraEnv." $parts._0) }}
{{- end }}
{{- /* Tokens copied from an example and never replaced, as app/auth.py sees them;
a sha256:<digest> is checked by the app alone. */}}
{{- $token := $parts._2 }}
{{- if and (not (hasPrefix "sha256:" $token)) (or (regexMatch "(?i)change[-_ ]?me|replace[-_ ]?me|placeholder|example|<.*>" $token) (lt (len (splitList "" $token | uniq)) 8)) }}
{{- fail (printf "\n\nkeychain: secrets.apiTokens token %q is a placeholder (CHANGE-ME, REPLACE-ME, <...>, example or too few distinct characters); make a real one with: python -c 'import secrets;print(secrets.token_urlsafe(32))'" $parts._0) }}
{{- end }}
{{- end }}
{{- end }}

{{- end }}{{/* not existingSecret */}}

{{- /* Token limits: "name:read|write:pattern,...", as app/auth.py _parse_limits reads
them. Not secret, so entries are shown; names are checked against inline tokens only. */}}
{{- range $i, $entry := splitList "," .Values.config.apiTokenLimits }}
{{- $entry = trim $entry }}
{{- if $entry }}
{{- $parts := splitn ":" 3 $entry }}
{{- $pattern := default "" $parts._2 }}
{{- if or (not (has $parts._1 (list "read" "write"))) (not $pattern) (eq $pattern "*") (contains "*" (trimSuffix "*" $pattern)) }}
{{- fail (printf "\n\nkeychain: config.apiTokenLimits entry %d (%q) must look like \"<token name>:<read|write>:<credential name, or a prefix ending in *>\"; '*' alone would grant everything." (add1 $i) $entry) }}
{{- end }}
{{- if and (not $.Values.secrets.existingSecret) (not (has $parts._0 $tokenNames)) }}
{{- fail (printf "\n\nkeychain: config.apiTokenLimits entry %d names the token %q, which secrets.apiTokens does not have." (add1 $i) $parts._0) }}
{{- end }}
{{- end }}
{{- end }}

{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail (printf "\n\nkeychain: tls.enabled is true but tls.existingSecret is empty. Name a Secret of type kubernetes.io/tls in namespace %s holding tls.crt and tls.key for %s.%s.svc (a cert-manager Certificate makes one)." .Release.Namespace (include "keychain.fullname" .) .Release.Namespace) }}
{{- end }}

{{- /* The rules select the job the ServiceMonitor makes: without it they would never fire. */}}
{{- if and .Values.prometheusRule.enabled (not .Values.serviceMonitor.enabled) }}
{{- fail "\n\nkeychain: prometheusRule.enabled needs serviceMonitor.enabled: the alerts select the metrics its ServiceMonitor scrapes (job <fullname> in the release's namespace), and without it they would never fire." }}
{{- end }}

{{- if gt (int64 .Values.config.defaultTtlSeconds) (int64 .Values.config.maxTtlSeconds) }}
{{- fail "\n\nkeychain: config.defaultTtlSeconds is larger than config.maxTtlSeconds." }}
{{- end }}

{{- if and .Values.autoscaling.enabled (gt (int64 .Values.autoscaling.minReplicas) (int64 .Values.autoscaling.maxReplicas)) }}
{{- fail "\n\nkeychain: autoscaling.minReplicas is larger than autoscaling.maxReplicas." }}
{{- end }}

{{- /* The grace period starts with the preStop hook; what is left after it must cover the
drain and the last writes, or the kubelet kills the server mid-drain and the requests in
flight and the last hit counts are lost. */}}
{{- $lastWritesSeconds := 5 }}
{{- $shutdown := add .Values.preStopSleepSeconds .Values.config.drainSeconds $lastWritesSeconds }}
{{- if gt (int64 $shutdown) (int64 .Values.terminationGracePeriodSeconds) }}
{{- fail (printf "\n\nkeychain: terminationGracePeriodSeconds (%d) is too short for the shutdown: preStopSleepSeconds (%d) + config.drainSeconds (%d) + %d seconds for the last writes = %d. Raise terminationGracePeriodSeconds to at least %d, or shorten the others." (int64 .Values.terminationGracePeriodSeconds) (int64 .Values.preStopSleepSeconds) (int64 .Values.config.drainSeconds) $lastWritesSeconds (int64 $shutdown) (int64 $shutdown)) }}
{{- end }}

{{- if .Values.podDisruptionBudget.enabled }}
{{- $min := .Values.podDisruptionBudget.minAvailable }}
{{- $max := .Values.podDisruptionBudget.maxUnavailable }}
{{- if and (not (kindIs "invalid" $min)) (not (kindIs "invalid" $max)) }}
{{- fail "\n\nkeychain: podDisruptionBudget takes minAvailable or maxUnavailable, not both." }}
{{- end }}
{{- end }}
{{- end }}


{{/*
Check a key ring, "id:<base64 of 32 bytes>,...", as app/crypto.py parse_keys
does: secrets.encryptionKeys and secrets.tokenSigningKeys share the format and
the rules. Takes a dict: field (the values path, for messages), keys (the ring).
Renders nothing; fails on the first bad entry, naming its position or id only.
*/}}
{{- define "keychain.validateKeyRing" -}}
{{- $field := .field }}
{{- $ids := list }}
{{- range $i, $entry := splitList "," .keys }}
{{- $entry = trim $entry }}
{{- if $entry }}
{{- $parts := splitn ":" 2 $entry }}
{{- $id := $parts._0 }}
{{- if not (regexMatch "^[A-Za-z0-9_.-]{1,64}$" $id) }}
{{- fail (printf "\n\nkeychain: %s entry %d must look like \"<id>:<base64 key>\" with an id of letters, digits, _ . - (value not shown)." $field (add1 $i)) }}
{{- end }}
{{- if not (regexMatch "^[A-Za-z0-9+/]{43}=$" (default "" $parts._1)) }}
{{- fail (printf "\n\nkeychain: %s key %q is not the standard base64 of exactly 32 bytes (value not shown)." $field $id) }}
{{- end }}
{{- /* A random key's base64 has about 31 distinct characters, fewer than 16 once
in 10^15; 32 zero bytes (AAAA...A=) have two, a short repeated pattern few. The
app refuses such keys too (app/crypto.py), but only once a pod starts. */}}
{{- if lt (len (splitList "" $parts._1 | uniq)) 16 }}
{{- fail (printf "\n\nkeychain: %s key %q is a placeholder (a repeated pattern such as 32 zero bytes), not random bytes. Make one with: python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'" $field $id) }}
{{- end }}
{{- if has $id $ids }}
{{- fail (printf "\n\nkeychain: %s lists key id %q twice." $field $id) }}
{{- end }}
{{- $ids = append $ids $id }}
{{- end }}
{{- end }}
{{- end }}
