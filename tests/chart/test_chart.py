"""The Helm chart: it lints, renders valid Kubernetes objects, refuses bad
values with a clear message, and behaves as an operator expects (hardened
pods, probes, a migration hook that runs before the pods)."""

from __future__ import annotations

import ast
import base64
import copy
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "keychain"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"

# Obvious placeholders, distinctive enough to search for in rendered output.
DATABASE_URL = "postgresql+asyncpg://keychain:not-a-password@db.example.internal:5432/keychain"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Fixed but not patterned: the chart refuses repeated-byte keys as placeholders.
ENCRYPTION_KEYS = f"k2:{b64(bytes(range(32)))},k1:{b64(bytes(range(32, 64)))}"
OTHER_KEY = b64(bytes(range(64, 96)))
SIGNING_KEYS = f"s2:{b64(bytes(range(96, 128)))},s1:{b64(bytes(range(128, 160)))}"
API_TOKENS = (
    "ci:worker:not-a-real-worker-token,engine:issuer:not-a-real-engine-token,ops:admin:sha256:"
    + "0" * 64
)
SECRETS = {
    "secrets": {
        "databaseUrl": DATABASE_URL,
        "encryptionKeys": ENCRYPTION_KEYS,
        "apiTokens": API_TOKENS,
        "tokenSigningKeys": SIGNING_KEYS,
    }
}

DEFAULT_KINDS = sorted(
    [
        "ConfigMap",
        "Deployment",
        "Job",
        "PodDisruptionBudget",
        "Secret",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
)
# The production example keeps its secrets in existing Secrets: the chart makes none.
PRODUCTION_KINDS = sorted(
    [kind for kind in DEFAULT_KINDS if kind != "Secret"]
    + ["HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor", "PrometheusRule", "ConfigMap"]
)
# Custom resources kubernetes-validate has no schema for.
CRD_API_GROUPS = ("monitoring.coreos.com/",)


def secrets_with(**overrides: str) -> dict:
    values = copy.deepcopy(SECRETS)
    values["secrets"].update(overrides)
    return values


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def annotations(doc: dict) -> dict:
    return doc["metadata"].get("annotations") or {}


def is_hook(doc: dict) -> bool:
    return "helm.sh/hook" in annotations(doc)


def plain_secret(docs: list[dict]) -> dict:
    return next(d for d in by_kind(docs, "Secret") if not is_hook(d))


def hook_secret(docs: list[dict]) -> dict:
    return next(d for d in by_kind(docs, "Secret") if is_hook(d))


def container(workload: dict) -> dict:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def settings_config_map(docs: list[dict]) -> dict:
    """The ConfigMap the server reads its settings from (the dashboard's, when on, is another)."""
    sources = container(one(docs, "Deployment"))["envFrom"]
    (name,) = [source["configMapRef"]["name"] for source in sources if "configMapRef" in source]
    return next(doc for doc in by_kind(docs, "ConfigMap") if doc["metadata"]["name"] == name)


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.fixture(scope="module")
def default_docs(helm) -> list[dict]:
    return helm.render(SECRETS)


@pytest.fixture(scope="module")
def production_docs(helm) -> list[dict]:
    return helm.render(PRODUCTION_VALUES)


# --- lint and render ----------------------------------------------------------


@pytest.mark.parametrize("values", ["default", "production"])
def test_helm_lint_passes(helm, values):
    files = helm.value_args([SECRETS if values == "default" else PRODUCTION_VALUES])
    result = helm.run("lint", "--strict", str(CHART), *files)
    assert result.returncode == 0, result.output
    assert "0 chart(s) failed" in result.output
    # Lint renders with `fail` downgraded to a log line: none of ours may appear.
    assert "keychain:" not in result.output, result.output


def test_default_values_render_the_expected_objects(default_docs):
    assert sorted(doc["kind"] for doc in default_docs) == DEFAULT_KINDS


def test_production_values_render_the_expected_objects(production_docs):
    assert sorted(doc["kind"] for doc in production_docs) == PRODUCTION_KINDS


@pytest.mark.parametrize("which", ["default", "production"])
def test_every_object_validates_against_the_kubernetes_schemas(request, which):
    docs = request.getfixturevalue(f"{which}_docs")
    version = kubernetes_validate.latest_version()
    checked = []
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_API_GROUPS):
            assert doc["kind"] and doc["metadata"]["name"], doc
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked.append(doc["kind"])
    assert "Deployment" in checked and "Job" in checked


def test_schema_validation_catches_a_broken_object(default_docs):
    # The check above is only worth something if the validator rejects mistakes.
    deployment = copy.deepcopy(one(default_docs, "Deployment"))
    container(deployment)["readinessProbe"]["httpGet"]["pathh"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


# --- bad values fail at template time -------------------------------------


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"replicaCount": "three"}, "replicaCount"),
        ({"config": {"logFormat": "xml"}}, "logFormat"),
        ({"config": {"sweepIntervalSeconds": -1}}, "sweepIntervalSeconds"),
        ({"config": {"maxTtlSeconds": 0}}, "maxTtlSeconds"),
        ({"service": {"port": 70000}}, "port"),
        ({"config": {"executionTokenTtlSeconds": 0}}, "executionTokenTtlSeconds"),
        ({"config": {"auditReads": "yes"}}, "auditReads"),
        ({"config": {"auditFlushSeconds": 0}}, "auditFlushSeconds"),
        ({"config": {"maxTokenDataBytes": 0}}, "maxTokenDataBytes"),
        ({"config": {"maxTokenDataDepth": 0}}, "maxTokenDataDepth"),
        ({"config": {"maxTokenDataItems": 0}}, "maxTokenDataItems"),
        ({"config": {"memoryTierMaxEntries": -1}}, "memoryTierMaxEntries"),
        ({"config": {"hitFlushSeconds": 0}}, "hitFlushSeconds"),
        ({"config": {"serveFromMemoryDuringOutage": "no"}}, "serveFromMemoryDuringOutage"),
        ({"config": {"apiTokenLimits": ["ci:read:ci-*"]}}, "apiTokenLimits"),
        ({"config": {"drainSeconds": -1}}, "drainSeconds"),
        ({"preStopSleepSeconds": "5s"}, "preStopSleepSeconds"),
        ({"replicaCount": 2, "replicas": 3}, "replicas"),
    ],
)
def test_values_schema_rejects_bad_values(helm, values, field):
    result = helm.template(SECRETS, values)
    assert result.returncode != 0
    assert "schema" in result.stderr and field in result.stderr, result.stderr


SHORT_KEY = base64.b64encode(b"short").decode()


@pytest.mark.parametrize(
    ("secrets", "message", "hidden"),
    [
        ({"encryptionKeys": ""}, "keychain: no encryption key", None),
        ({"apiTokens": ""}, "keychain: no API tokens", None),
        ({"databaseUrl": ""}, "keychain: no database URL", None),
        (
            {"encryptionKeys": "k1:" + SHORT_KEY},
            'key "k1" is not the standard base64 of exactly 32 bytes',
            SHORT_KEY,
        ),
        (
            {"encryptionKeys": ENCRYPTION_KEYS + ",k1:" + OTHER_KEY},
            'lists key id "k1" twice',
            OTHER_KEY,
        ),
        # Placeholders copied from an example must not reach a cluster.
        (
            {"encryptionKeys": "k1:" + b64(bytes(32))},
            'key "k1" is a placeholder',
            b64(bytes(32))[:40],
        ),
        (
            {"encryptionKeys": ENCRYPTION_KEYS + ",k3:" + b64(b"\x01" * 32)},
            'key "k3" is a placeholder',
            b64(b"\x01" * 32)[:40],
        ),
        (
            {"apiTokens": "ci:worker:CHANGE-ME-worker-token"},
            'token "ci" is a placeholder',
            "worker-token",
        ),
        (
            {"apiTokens": API_TOKENS + ",ops2:admin:changeme"},
            'token "ops2" is a placeholder',
            "changeme",
        ),
        (
            {"apiTokens": "ci:worker:Replace_Me_123"},
            'token "ci" is a placeholder',
            "Replace_Me_123",
        ),
        ({"apiTokens": "ci:worker:<worker-token>"}, 'token "ci" is a placeholder', "worker-token"),
        ({"apiTokens": "ci:worker:" + "ab" * 12}, 'token "ci" is a placeholder', "ab" * 12),
        # verify-full needs a CA file; asyncpg would refuse to connect at start.
        (
            {"databaseUrl": DATABASE_URL + "?sslmode=verify-full"},
            "asks for sslmode=verify-full or verify-ca but no CA is given",
            "not-a-password",
        ),
        (
            {"apiTokens": "ci:reader:not-a-real-token"},
            'token "ci" needs the role worker, issuer or admin',
            "not-a-real-token",
        ),
        # The server would refuse to start: nothing to sign execution tokens with.
        (
            {"tokenSigningKeys": ""},
            'token "engine" has the role issuer, which mints execution tokens, but secrets.tokenSigningKeys is empty',
            "not-a-real-engine-token",
        ),
        # Signing keys follow the encryption keys' rules, and name the key id only.
        (
            {"tokenSigningKeys": "s1:" + SHORT_KEY},
            'secrets.tokenSigningKeys key "s1" is not the standard base64 of exactly 32 bytes',
            SHORT_KEY,
        ),
        (
            {"tokenSigningKeys": "s1:" + b64(bytes(32))},
            'secrets.tokenSigningKeys key "s1" is a placeholder',
            b64(bytes(32))[:40],
        ),
        (
            {"tokenSigningKeys": SIGNING_KEYS + ",s1:" + OTHER_KEY},
            'secrets.tokenSigningKeys lists key id "s1" twice',
            OTHER_KEY,
        ),
        (
            {"tokenSigningKeys": OTHER_KEY},
            "secrets.tokenSigningKeys entry 1 must look like",
            OTHER_KEY,
        ),
        (
            {"apiTokens": "ci:not-a-real-token"},
            "secrets.apiTokens entry 1 must look like",
            "not-a-real-token",
        ),
        (
            {"databaseUrl": "mysql://keychain:hunter2@db/keychain"},
            "must start with postgresql://",
            "hunter2",
        ),
        (
            {"databaseUrl": "postgresql+psycopg://keychain:hunter2@db/keychain"},
            "postgres://",
            "hunter2",
        ),
    ],
)
def test_validation_fails_fast_with_a_clear_message(helm, secrets, message, hidden):
    result = helm.template(secrets_with(**secrets))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    # Messages name the field, never the secret.
    if hidden:
        assert hidden not in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://keychain:not-a-password@db.example.internal:5432/keychain",
        "postgres://keychain:not-a-password@db.example.internal/keychain",
        "postgresql+asyncpg://keychain:not-a-password@db.example.internal/keychain",
        # libpq's sslmode: the app translates it for asyncpg.
        "postgresql://keychain:not-a-password@db.example.internal/keychain?sslmode=require",
        "postgres://keychain@/keychain?host=/var/run/postgresql&sslmode=disable",
    ],
)
def test_every_database_url_the_app_accepts_renders(helm, url):
    docs = helm.render(secrets_with(databaseUrl=url))
    for secret in (plain_secret(docs), hook_secret(docs)):
        assert base64.b64decode(secret["data"]["KEYCHAIN_DATABASE_URL"]).decode() == url


def env_named(workload: dict, name: str) -> list[dict]:
    return [e for e in container(workload).get("env", []) if e["name"] == name]


def secret_refs(workload: dict) -> list[tuple[str, str | None]]:
    """(Secret name, key or None for the whole Secret) for every Secret the container reads."""
    main = container(workload)
    whole = [(s["secretRef"]["name"], None) for s in main.get("envFrom", []) if "secretRef" in s]
    keys = [
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in main.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    return whole + keys


def test_existing_secret_replaces_the_inline_secrets(helm):
    docs = helm.render({"secrets": {"existingSecret": "keychain-credentials"}})
    assert by_kind(docs, "Secret") == []
    assert secret_refs(one(docs, "Deployment")) == [("keychain-credentials", None)]
    # The migration reads only the database URL out of it, not the keys and tokens.
    assert secret_refs(one(docs, "Job")) == [("keychain-credentials", "KEYCHAIN_DATABASE_URL")]
    assert "envFrom" not in container(one(docs, "Job"))


def test_database_url_may_come_from_extra_env(helm):
    from_operator = {
        "name": "KEYCHAIN_DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "pg-app", "key": "uri"}},
    }
    docs = helm.render(secrets_with(databaseUrl=""), {"extraEnv": [from_operator]})
    assert "KEYCHAIN_DATABASE_URL" not in plain_secret(docs)["data"]
    for workload in (one(docs, "Deployment"), one(docs, "Job")):
        assert env_named(workload, "KEYCHAIN_DATABASE_URL") == [from_operator]
    # Nothing left for a hook Secret to carry.
    assert [d for d in by_kind(docs, "Secret") if is_hook(d)] == []
    assert secret_refs(one(docs, "Job")) == [("pg-app", "uri")]


def test_extra_env_database_url_wins_over_the_existing_secret(helm):
    from_operator = {
        "name": "KEYCHAIN_DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "pg-app", "key": "uri"}},
    }
    docs = helm.render(
        {"secrets": {"existingSecret": "keychain-credentials"}, "extraEnv": [from_operator]}
    )
    # One definition only: a duplicate env name would leave the winner to the kubelet.
    assert env_named(one(docs, "Job"), "KEYCHAIN_DATABASE_URL") == [from_operator]


# --- what an operator would notice ---------------------------------------


def test_server_pods_run_hardened(default_docs):
    pod = one(default_docs, "Deployment")["spec"]["template"]["spec"]
    security = container(one(default_docs, "Deployment"))["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (
        isinstance(pod["securityContext"]["runAsUser"], int)
        and pod["securityContext"]["runAsUser"] > 0
    )
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    assert one(default_docs, "ServiceAccount")["automountServiceAccountToken"] is False
    # The one writable path: /tmp on an emptyDir.
    (mount,) = container(one(default_docs, "Deployment"))["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    assert next(v for v in pod["volumes"] if v["name"] == mount["name"])["emptyDir"] is not None


def test_probes_hit_ready_and_health(default_docs):
    server = container(one(default_docs, "Deployment"))
    assert server["ports"] == [{"name": "http", "containerPort": 8082, "protocol": "TCP"}]
    assert server["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    # A database blip must not restart pods: liveness and startup do no I/O.
    assert server["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert server["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}


def test_service_routes_port_8082_to_the_server_pods_only(default_docs):
    service = one(default_docs, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["name"] == "http"
    assert service["spec"]["ports"][0]["port"] == 8082
    server_labels = one(default_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    migration_labels = one(default_docs, "Job")["spec"]["template"]["metadata"]["labels"]
    assert matches(service["spec"]["selector"], server_labels)
    assert not matches(service["spec"]["selector"], migration_labels)


def test_migration_runs_as_a_hook_before_install_and_upgrade(default_docs):
    job = one(default_docs, "Job")
    hook = annotations(job)
    assert set(hook["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert set(hook["helm.sh/hook-delete-policy"].split(",")) == {
        "before-hook-creation",
        "hook-succeeded",
    }
    migrate = container(job)
    assert migrate["command"] + migrate["args"] == ["keychain", "migrate"]
    assert job["spec"]["activeDeadlineSeconds"] > 0
    assert job["spec"]["backoffLimit"] >= 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # The Job's pod must not count as a server pod (Deployment, PDB, Service).
    selector = one(default_docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert not matches(selector, job["spec"]["template"]["metadata"]["labels"])


def test_migration_hook_only_uses_what_exists_before_install(default_docs):
    # A pre-install hook runs before the release's ordinary objects exist.
    job = one(default_docs, "Job")
    migrate = container(job)
    assert "envFrom" not in migrate
    ((secret_name, key),) = secret_refs(job)
    secret = hook_secret(default_docs)
    assert (secret["metadata"]["name"], key) == (secret_name, "KEYCHAIN_DATABASE_URL")
    assert secret_name != plain_secret(default_docs)["metadata"]["name"]
    assert "pre-install" in annotations(secret)["helm.sh/hook"]
    assert int(annotations(secret)["helm.sh/hook-weight"]) < int(
        annotations(job)["helm.sh/hook-weight"]
    )
    config = one(default_docs, "ConfigMap")["data"]
    assert {e["name"]: e["value"] for e in migrate["env"] if "value" in e} == config
    assert (
        job["spec"]["template"]["spec"]["serviceAccountName"]
        != one(default_docs, "ServiceAccount")["metadata"]["name"]
    )


def test_migration_sees_only_the_database_url(default_docs):
    # `keychain migrate` needs the URL alone: the keys and tokens stay out of
    # the hook Secret, which may outlive a failed migration on older Helm.
    secret = hook_secret(default_docs)
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "KEYCHAIN_DATABASE_URL": DATABASE_URL
    }
    job = one(default_docs, "Job")
    names = [e["name"] for e in container(job)["env"]]
    assert len(names) == len(set(names))
    assert not {
        "KEYCHAIN_ENCRYPTION_KEYS",
        "KEYCHAIN_API_TOKENS",
        "KEYCHAIN_TOKEN_SIGNING_KEYS",
    } & set(names)


def test_hook_secret_is_deleted_whatever_the_migration_outcome(default_docs):
    policy = set(annotations(hook_secret(default_docs))["helm.sh/hook-delete-policy"].split(","))
    assert policy == {"before-hook-creation", "hook-succeeded", "hook-failed"}
    # The Job stays after a failure so its logs can be read.
    assert "hook-failed" not in annotations(one(default_docs, "Job"))["helm.sh/hook-delete-policy"]


def test_server_pods_never_migrate(default_docs, production_docs):
    for docs in (default_docs, production_docs):
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        assert "initContainers" not in pod
        server = container(one(docs, "Deployment"))
        assert server["command"] + server["args"] == ["keychain", "serve"]


def test_settings_split_between_configmap_and_secret(default_docs):
    config = one(default_docs, "ConfigMap")["data"]
    for secret_value in (
        DATABASE_URL,
        ENCRYPTION_KEYS,
        API_TOKENS,
        SIGNING_KEYS,
        "not-a-password",
        "not-a-real-worker-token",
    ):
        assert not any(secret_value in value for value in config.values())
    assert not {
        "KEYCHAIN_DATABASE_URL",
        "KEYCHAIN_ENCRYPTION_KEYS",
        "KEYCHAIN_API_TOKENS",
        "KEYCHAIN_TOKEN_SIGNING_KEYS",
    } & set(config)
    assert config["KEYCHAIN_HOST"] == "0.0.0.0"
    assert config["KEYCHAIN_PORT"] == "8082"
    assert config["KEYCHAIN_LOG_FORMAT"] == "json"
    # Large numbers must stay integers (Helm turns them into 2.592e+06 unless told).
    assert config["KEYCHAIN_MAX_TTL_SECONDS"] == "2592000"
    assert config["KEYCHAIN_MAX_BODY_BYTES"] == "1048576"
    decoded = {
        k: base64.b64decode(v).decode() for k, v in plain_secret(default_docs)["data"].items()
    }
    assert decoded == {
        "KEYCHAIN_DATABASE_URL": DATABASE_URL,
        "KEYCHAIN_ENCRYPTION_KEYS": ENCRYPTION_KEYS,
        "KEYCHAIN_API_TOKENS": API_TOKENS,
        "KEYCHAIN_TOKEN_SIGNING_KEYS": SIGNING_KEYS,
    }
    sources = container(one(default_docs, "Deployment"))["envFrom"]
    assert {"configMapRef": {"name": one(default_docs, "ConfigMap")["metadata"]["name"]}} in sources
    assert {"secretRef": {"name": plain_secret(default_docs)["metadata"]["name"]}} in sources


def settings_environment_names() -> set[str]:
    """KEYCHAIN_* names app/settings.py reads: KEYCHAIN_ + a Settings field upper-cased, or
    a _RENAMED suffix. Read from the source, so these tests need no app dependencies."""
    tree = ast.parse((ROOT / "app" / "settings.py").read_text())
    (settings,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    fields = {n.target.id for n in settings.body if isinstance(n, ast.AnnAssign)}
    (renamed,) = [
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.AnnAssign | ast.Assign)
        and "_RENAMED" in [t.id for t in (n.targets if isinstance(n, ast.Assign) else [n.target])]
    ]
    names = {field for field in fields if field not in renamed.values()} | set(renamed)
    return {"KEYCHAIN_" + name.upper() for name in names}


def test_every_configmap_key_is_a_setting_the_app_reads(default_docs, helm):
    # A misspelt name is silently ignored by the app, which then runs on its default.
    known = settings_environment_names()
    with_limits = helm.render(SECRETS, {"config": {"apiTokenLimits": "ci:read:ci-*"}})
    for docs in (default_docs, with_limits):
        config = one(docs, "ConfigMap")["data"]
        assert set(config) <= known, set(config) - known
    secret = plain_secret(default_docs)["data"]
    assert set(secret) <= known, set(secret) - known


def test_least_privilege_settings_render_into_the_configmap(helm, default_docs):
    config = one(default_docs, "ConfigMap")["data"]
    assert {
        name: config[name] for name in config if name in LEAST_PRIVILEGE_DEFAULTS
    } == LEAST_PRIVILEGE_DEFAULTS
    # No limits unless asked for: an empty one would only hide a mistake.
    assert "KEYCHAIN_API_TOKEN_LIMITS" not in config
    limits = "ci:read:projects/1/secrets/ci-*,ci:write:ci-cache"
    docs = helm.render(
        SECRETS,
        {
            "config": {
                "apiTokenLimits": limits,
                "executionTokenTtlSeconds": 3600,
                "auditReads": False,
                "auditFlushSeconds": 0.5,
                "maxTokenDataBytes": 2097152,
            }
        },
    )
    config = one(docs, "ConfigMap")["data"]
    assert config["KEYCHAIN_API_TOKEN_LIMITS"] == limits
    assert config["KEYCHAIN_EXECUTION_TOKEN_TTL_SECONDS"] == "3600"
    assert config["KEYCHAIN_AUDIT_READS"] == "false"
    assert config["KEYCHAIN_AUDIT_FLUSH_SECONDS"] == "0.5"
    # Large numbers stay integers here too.
    assert config["KEYCHAIN_MAX_TOKEN_DATA_BYTES"] == "2097152"
    # The migration Job gets the same settings inline.
    job = container(one(docs, "Job"))
    assert {e["name"]: e["value"] for e in job["env"] if "value" in e} == config


LEAST_PRIVILEGE_DEFAULTS = {
    "KEYCHAIN_EXECUTION_TOKEN_TTL_SECONDS": "86400",
    "KEYCHAIN_AUDIT_READS": "true",
    "KEYCHAIN_AUDIT_FLUSH_SECONDS": "1",
    "KEYCHAIN_MAX_TOKEN_DATA_BYTES": "65536",
    "KEYCHAIN_MAX_TOKEN_DATA_DEPTH": "32",
    "KEYCHAIN_MAX_TOKEN_DATA_ITEMS": "10000",
    "KEYCHAIN_MEMORY_TIER_MAX_ENTRIES": "10000",
    "KEYCHAIN_MEMORY_TIER_MAX_BYTES": "67108864",
    "KEYCHAIN_HIT_FLUSH_SECONDS": "1",
    "KEYCHAIN_SERVE_FROM_MEMORY_DURING_OUTAGE": "true",
    "KEYCHAIN_LOG_READS": "true",
}


def test_every_role_the_app_knows_is_accepted(helm):
    tokens = "w:worker:not-a-real-worker-token,e:issuer:not-a-real-engine-token,a:admin:not-a-real-admin-token"
    docs = helm.render(secrets_with(apiTokens=tokens))
    assert base64.b64decode(plain_secret(docs)["data"]["KEYCHAIN_API_TOKENS"]).decode() == tokens
    # Without an issuer the signing keys are optional, and then left out of the Secret.
    docs = helm.render(
        secrets_with(apiTokens="w:worker:not-a-real-worker-token", tokenSigningKeys="")
    )
    assert "KEYCHAIN_TOKEN_SIGNING_KEYS" not in plain_secret(docs)["data"]


def test_signing_keys_may_come_from_extra_env(helm):
    # As the database URL may: e.g. a secretKeyRef to a Secret the secret manager makes.
    from_operator = {
        "name": "KEYCHAIN_TOKEN_SIGNING_KEYS",
        "valueFrom": {"secretKeyRef": {"name": "keychain-signing", "key": "keys"}},
    }
    docs = helm.render(secrets_with(tokenSigningKeys=""), {"extraEnv": [from_operator]})
    assert from_operator in container(one(docs, "Deployment"))["env"]


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ("ci:readwrite:ci-*", 'config.apiTokenLimits entry 1 ("ci:readwrite:ci-*") must look like'),
        ("ci:read:*", "'*' alone would grant everything"),
        ("ci:read:ci-*,ci:write:a*b", 'entry 2 ("ci:write:a*b") must look like'),
        ("ci:read:", 'entry 1 ("ci:read:") must look like'),
        ("nobody:read:ci-*", 'names the token "nobody", which secrets.apiTokens does not have'),
    ],
)
def test_bad_token_limits_fail_with_a_clear_message(helm, limits, message):
    result = helm.template(SECRETS, {"config": {"apiTokenLimits": limits}})
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_production_values_fit_the_database_connection_limit(production_docs):
    # KEYCHAIN_DB_POOL_SIZE is a hard cap per pod (no overflow); the migration
    # Job holds one more. The example claims to fit max_connections=100 less
    # PostgreSQL's 3 superuser_reserved_connections: keep that true.
    per_pod = int(settings_config_map(production_docs)["data"]["KEYCHAIN_DB_POOL_SIZE"])
    most_pods = (
        one(production_docs, "HorizontalPodAutoscaler")["spec"]["maxReplicas"]
        + one(production_docs, "Deployment")["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    )
    assert most_pods * per_pod + 1 <= 100 - 3


def test_pods_roll_when_settings_change(helm, default_docs):
    def checksums(docs):
        pod_annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return pod_annotations["checksum/config"], pod_annotations["checksum/secret"]

    config, secret = checksums(default_docs)
    assert checksums(helm.render(SECRETS, {"config": {"logLevel": "DEBUG"}})) != (config, secret)
    assert checksums(helm.render(SECRETS, {"config": {"logLevel": "DEBUG"}}))[1] == secret
    assert (
        checksums(helm.render(secrets_with(apiTokens="ci:worker:another-fake-token")))[1] != secret
    )


def test_autoscaler_owns_the_replica_count(default_docs, production_docs):
    assert one(default_docs, "Deployment")["spec"]["replicas"] == 2
    deployment = one(production_docs, "Deployment")
    assert "replicas" not in deployment["spec"]
    hpa = one(production_docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] == 3


def test_disruption_budget_covers_the_server_pods(default_docs, production_docs):
    pdb = one(default_docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    production_pdb = one(production_docs, "PodDisruptionBudget")
    assert (
        production_pdb["spec"]["minAvailable"] == 2
        and "maxUnavailable" not in production_pdb["spec"]
    )
    labels = one(production_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert matches(production_pdb["spec"]["selector"]["matchLabels"], labels)


def test_service_monitor_scrapes_metrics(production_docs):
    monitor = one(production_docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    # The production example serves TLS: Prometheus scrapes https, checking the
    # certificate against the name it was made for, not the pod IP it dials.
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "keychain-tls", "key": "ca.crt"}},
        "serverName": "kc-keychain.keychain.svc",
    }
    assert matches(
        monitor["spec"]["selector"]["matchLabels"],
        one(production_docs, "Service")["metadata"]["labels"],
    )
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_network_policy_allows_callers_dns_and_the_database(production_docs):
    policy = one(production_docs, "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert matches(
        policy["podSelector"]["matchLabels"],
        one(production_docs, "Deployment")["spec"]["template"]["metadata"]["labels"],
    )
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert len(ingress["from"]) == 2
    egress_ports = [(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]]
    assert (53, "UDP") in egress_ports and (53, "TCP") in egress_ports
    database_rule = next(
        rule for rule in policy["egress"] if rule["ports"] == [{"port": 5432, "protocol": "TCP"}]
    )
    assert database_rule["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "databases"
    }


def test_optional_objects_are_off_by_default(default_docs):
    kinds = {doc["kind"] for doc in default_docs}
    assert not kinds & {
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "NetworkPolicy",
        "PrometheusRule",
    }
    assert by_kind(default_docs, "ConfigMap") == [settings_config_map(default_docs)]


def test_topology_spread_gets_the_server_selector(production_docs):
    deployment = one(production_docs, "Deployment")
    constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    for constraint in constraints:
        assert (
            constraint["labelSelector"]["matchLabels"]
            == deployment["spec"]["selector"]["matchLabels"]
        )


def test_image_defaults_to_the_app_version(default_docs, helm):
    assert container(one(default_docs, "Deployment"))["image"] == "noetl/keychain:0.1.0"
    assert container(one(default_docs, "Job"))["image"] == "noetl/keychain:0.1.0"
    digest = "sha256:" + "a" * 64
    docs = helm.render(SECRETS, {"image": {"digest": digest}})
    assert container(one(docs, "Deployment"))["image"] == f"noetl/keychain@{digest}"


def test_notes_tell_how_to_reach_the_ui_and_metrics(helm):
    result = helm.notes(SECRETS)
    assert result.returncode == 0, result.output
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n keychain port-forward service/kc-keychain 8082:8082" in notes
    assert "http://localhost:8082/schema" in notes
    assert "http://localhost:8082/metrics" in notes


def test_notes_list_what_an_existing_secret_must_hold(helm):
    notes = helm.notes({"secrets": {"existingSecret": "keychain-credentials"}})
    assert notes.returncode == 0, notes.output
    text = notes.stdout.split("NOTES:", 1)[1]
    assert "Secret keychain-credentials" in text
    for key in (
        "KEYCHAIN_DATABASE_URL",
        "KEYCHAIN_ENCRYPTION_KEYS",
        "KEYCHAIN_API_TOKENS",
        "KEYCHAIN_TOKEN_SIGNING_KEYS",
        "worker|issuer|admin",
    ):
        assert key in text
    # Where the pods' refusal to start can be read.
    assert "kubectl -n keychain logs deployment/kc-keychain" in text

    # A URL from extraEnv need not be in the Secret.
    from_operator = {
        "name": "KEYCHAIN_DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "pg", "key": "uri"}},
    }
    notes = helm.notes(
        {"secrets": {"existingSecret": "keychain-credentials"}, "extraEnv": [from_operator]}
    )
    text = notes.stdout.split("NOTES:", 1)[1]
    assert "KEYCHAIN_DATABASE_URL" not in text and "KEYCHAIN_API_TOKENS" in text

    # Inline secrets were checked at install time: no such section.
    inline = helm.notes(SECRETS).stdout.split("NOTES:", 1)[1]
    assert "KEYCHAIN_ENCRYPTION_KEYS" not in inline


def test_values_document_what_an_existing_secret_must_hold():
    values = (CHART / "values.yaml").read_text()
    documented = values[: values.index("  existingSecret:")]
    for key in (
        "KEYCHAIN_DATABASE_URL",
        "KEYCHAIN_ENCRYPTION_KEYS",
        "KEYCHAIN_API_TOKENS",
        "KEYCHAIN_TOKEN_SIGNING_KEYS",
    ):
        assert key in documented
    # So does the production example, which uses one.
    assert "KEYCHAIN_TOKEN_SIGNING_KEYS" in PRODUCTION_VALUES.read_text()


# --- alerts and dashboard ---------------------------------------------------


def exported_metric_names() -> set[str]:
    """The series app/metrics.py exports: a counter as <name>_total, a histogram as _bucket,
    _count and _sum. Read from the source, so these tests need no app dependencies."""
    series = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_count", "_sum")}
    names = set()
    for node in ast.walk(ast.parse((ROOT / "app" / "metrics.py").read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in series:
            names |= {node.args[0].value + suffix for suffix in series[node.func.id]}
    return names


def queried_metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bkeychain_[a-z_]+", expr))


def alerts(docs: list[dict]) -> dict[str, dict]:
    rule = one(docs, "PrometheusRule")
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def dashboard(docs: list[dict]) -> tuple[dict, dict]:
    """(the dashboard's ConfigMap, the dashboard it carries, parsed)."""
    (config_map,) = [d for d in by_kind(docs, "ConfigMap") if d is not settings_config_map(docs)]
    (document,) = config_map["data"].values()
    return config_map, json.loads(document)


def test_alerts_cover_database_errors_sweeper_and_listener(production_docs):
    rule = one(production_docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    # The label the production Prometheus selects rules by, as it does ServiceMonitors.
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    found = alerts(production_docs)
    assert set(found) == {
        "KeychainDatabaseDown",
        "KeychainServerErrors",
        "KeychainSweeperFailing",
        "KeychainInvalidationListenerDown",
    }
    # kubernetes-validate knows no PrometheusRule: check what Prometheus and Alertmanager need.
    for name, alert in found.items():
        assert alert["expr"].strip(), name
        assert re.fullmatch(r"([0-9]+[smh])+", alert["for"]), name
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
        assert alert["annotations"]["summary"].strip(), name
    assert found["KeychainDatabaseDown"]["labels"]["severity"] == "critical"
    assert "keychain_database_up" in found["KeychainDatabaseDown"]["expr"]
    assert 'status=~"5.."' in found["KeychainServerErrors"]["expr"]
    assert 'result="failed"' in found["KeychainSweeperFailing"]["expr"]
    assert "keychain_invalidation_listener_up" in found["KeychainInvalidationListenerDown"]["expr"]
    # Alertmanager fills these in: Helm must have left them alone.
    assert "{{ $labels.pod }}" in found["KeychainDatabaseDown"]["annotations"]["summary"]


def test_alerts_query_what_the_service_monitor_scrapes(production_docs):
    # The operator names the job after the Service the ServiceMonitor selects.
    monitor = one(production_docs, "ServiceMonitor")["spec"]
    service = one(production_docs, "Service")["metadata"]
    assert matches(monitor["selector"]["matchLabels"], service["labels"])
    (namespace,) = monitor["namespaceSelector"]["matchNames"]
    scraped = {f'namespace="{namespace}"', f'job="{service["name"]}"'}
    for name, alert in alerts(production_docs).items():
        for selector in re.findall(r"keychain_[a-z_]+\{([^}]*)\}", alert["expr"]):
            assert scraped <= {part.strip() for part in selector.split(",")}, (name, selector)
        assert queried_metric_names(alert["expr"]) <= exported_metric_names(), name


def test_server_error_threshold_follows_the_values(helm):
    docs = helm.render(
        SECRETS, {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
    )
    assert alerts(docs)["KeychainServerErrors"]["expr"].rstrip().endswith("> 5")
    docs = helm.render(
        SECRETS,
        {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True, "serverErrorPercent": 0.5},
        },
    )
    assert alerts(docs)["KeychainServerErrors"]["expr"].rstrip().endswith("> 0.5")


def test_alerts_without_the_service_monitor_fail_with_a_clear_message(helm):
    # Nothing would scrape the job the alerts select: they could never fire.
    result = helm.template(SECRETS, {"prometheusRule": {"enabled": True}})
    assert result.returncode != 0
    assert "keychain: prometheusRule.enabled needs serviceMonitor.enabled" in result.stderr, (
        result.stderr
    )


def test_dashboard_is_json_the_grafana_sidecar_loads(production_docs):
    config_map, board = dashboard(production_docs)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    # Where Grafana's sidecar looks, not the release's namespace.
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Keychain"}
    assert board["uid"] and board["title"] == "Keychain"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'namespace="$namespace", job="$job"' in target["expr"], panel["title"]


def test_dashboard_shows_every_metric_the_server_exports_and_no_other(production_docs):
    _, board = dashboard(production_docs)
    queried = set().union(
        *(queried_metric_names(t["expr"]) for p in board["panels"] for t in p["targets"])
    )
    exported = exported_metric_names()
    assert queried <= exported, queried - exported
    # A histogram counts as shown through any of its series.
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in exported}
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in queried}
    assert shown == families, families - shown


def test_dashboard_label_follows_the_values(helm):
    docs = helm.render(
        SECRETS,
        {"grafanaDashboard": {"enabled": True, "label": "dashboards", "labelValue": "keychain"}},
    )
    config_map, _ = dashboard(docs)
    assert config_map["metadata"]["labels"]["dashboards"] == "keychain"
    assert "grafana_dashboard" not in config_map["metadata"]["labels"]
    # Left out, helm puts it in the release's namespace.
    assert "namespace" not in config_map["metadata"]
    kubernetes_validate.validate(config_map, kubernetes_validate.latest_version(), strict=True)


# --- shutdown -----------------------------------------------------------------

# What the chart keeps of the grace period for the server's last writes after the drain.
LAST_WRITES_SECONDS = 5


def shutdown_timings(docs: list[dict]) -> tuple[int, int, int]:
    """(preStop sleep, drain, grace period) in seconds, as the kubelet and the server read them."""
    deployment = one(docs, "Deployment")
    command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = int(settings_config_map(docs)["data"]["KEYCHAIN_DRAIN_SECONDS"])
    return (
        int(command[1]),
        drain,
        deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
    )


@pytest.mark.parametrize("which", ["default", "production"])
def test_shutdown_fits_in_the_grace_period(request, which):
    # The grace period counts from the preStop hook: the sleep, then SIGTERM and the
    # drain, then the last writes must all end before the kubelet kills the server.
    pre_stop, drain, grace = shutdown_timings(request.getfixturevalue(f"{which}_docs"))
    assert pre_stop > 0 and drain > 0
    assert pre_stop + drain + LAST_WRITES_SECONDS <= grace


def test_shutdown_timings_follow_the_values(helm):
    # Exactly enough is enough.
    values = {
        "preStopSleepSeconds": 8,
        "config": {"drainSeconds": 20},
        "terminationGracePeriodSeconds": 33,
    }
    assert shutdown_timings(helm.render(SECRETS, values)) == (8, 20, 33)
    # 0 drops the hook: SIGTERM comes at once.
    docs = helm.render(SECRETS, {"preStopSleepSeconds": 0})
    assert "lifecycle" not in container(one(docs, "Deployment"))


def test_a_grace_period_too_short_for_the_shutdown_fails_with_a_clear_message(helm):
    result = helm.template(SECRETS, {"config": {"drainSeconds": 25}})
    assert result.returncode != 0
    assert (
        "keychain: terminationGracePeriodSeconds (30) is too short for the shutdown: "
        "preStopSleepSeconds (5) + config.drainSeconds (25) + 5 seconds for the last writes = 35. "
        "Raise terminationGracePeriodSeconds to at least 35"
    ) in result.stderr, result.stderr


# --- TLS ----------------------------------------------------------------------

TLS = {"tls": {"enabled": True, "existingSecret": "keychain-tls"}}


def mounted_file(workload: dict, path: str) -> tuple[dict, dict]:
    """The (volumeMount, volume) that serves `path` in the workload's container."""
    mount = next(
        m for m in container(workload)["volumeMounts"] if path.startswith(m["mountPath"] + "/")
    )
    volume = next(
        v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    return mount, volume


def env_value(workload: dict, name: str) -> str:
    (only,) = env_named(workload, name)
    return only["value"]


def test_tls_mounts_the_certificate_and_serves_https(helm):
    docs = helm.render(SECRETS, TLS)
    deployment = one(docs, "Deployment")
    server = container(deployment)
    for setting, key in (
        ("KEYCHAIN_TLS_CERT_FILE", "tls.crt"),
        ("KEYCHAIN_TLS_KEY_FILE", "tls.key"),
    ):
        path = env_value(deployment, setting)
        mount, volume = mounted_file(deployment, path)
        assert mount["readOnly"] is True
        assert volume["secret"]["secretName"] == "keychain-tls"
        item = path[len(mount["mountPath"]) + 1 :]
        assert {"key": key, "path": item} in volume["secret"]["items"]
    # Group-readable only: the pod's fsGroup owns the files, others read nothing.
    assert volume["secret"]["defaultMode"] == 0o440
    assert deployment["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 10001
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["httpGet"]["scheme"] == "HTTPS", probe
    assert one(docs, "Service")["spec"]["ports"][0]["appProtocol"] == "https"
    # The migration serves nothing: the private key stays out of its pod.
    job = one(docs, "Job")
    assert not env_named(job, "KEYCHAIN_TLS_KEY_FILE")
    job_secrets = [
        v["secret"]["secretName"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    ]
    assert "keychain-tls" not in job_secrets
    kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_without_tls_the_server_is_plain_http(default_docs):
    deployment = one(default_docs, "Deployment")
    assert not env_named(deployment, "KEYCHAIN_TLS_CERT_FILE")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "scheme" not in container(deployment)[probe]["httpGet"], probe
    assert one(default_docs, "Service")["spec"]["ports"][0]["appProtocol"] == "http"


def test_tls_without_a_secret_fails_with_a_clear_message(helm):
    result = helm.template(SECRETS, {"tls": {"enabled": True}})
    assert result.returncode != 0
    assert "keychain: tls.enabled is true but tls.existingSecret is empty" in result.stderr
    # It says what the certificate must name.
    assert "kc-keychain.keychain.svc" in result.stderr


def test_database_ca_is_mounted_for_verify_full(helm):
    url = DATABASE_URL + "?sslmode=verify-full"
    docs = helm.render(
        secrets_with(databaseUrl=url), {"databaseCA": {"existingSecret": "keychain-db-ca"}}
    )
    # Both connect: the server, and the migration before it.
    for workload in (one(docs, "Deployment"), one(docs, "Job")):
        path = env_value(workload, "PGSSLROOTCERT")
        mount, volume = mounted_file(workload, path)
        assert mount["readOnly"] is True
        assert volume["secret"] == {
            "secretName": "keychain-db-ca",
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }
        assert path == mount["mountPath"] + "/ca.crt"
    # A CA the operator mounts some other way, named in extraEnv, is enough too.
    from_operator = {"name": "PGSSLROOTCERT", "value": "/etc/ssl/certs/db-ca.pem"}
    helm.render(secrets_with(databaseUrl=url), {"extraEnv": [from_operator]})


def test_notes_with_tls_give_workers_an_https_url_and_the_ca(helm):
    notes = helm.notes(SECRETS, TLS).stdout.split("NOTES:", 1)[1]
    assert "KEYCHAIN_SERVER_URL=https://kc-keychain.keychain.svc:8082" in notes
    assert "KEYCHAIN_CA_FILE=" in notes
    assert "--cacert ca.crt" in notes
    plain = helm.notes(SECRETS).stdout.split("NOTES:", 1)[1]
    assert "KEYCHAIN_SERVER_URL=http://kc-keychain.keychain.svc:8082" in plain
    assert "cross the network in clear" in plain


def test_notes_send_workers_to_the_engine_for_execution_tokens(helm):
    notes = helm.notes(SECRETS).stdout.split("NOTES:", 1)[1]
    assert "worker|issuer|admin" in notes
    assert "POST /api/execution-tokens" in notes
    assert "86400s" in notes


def test_examples_verify_the_database_certificate(helm):
    # What operators copy: every example database URL checks the server's certificate.
    for example in ((CHART / "values.yaml").read_text(), PRODUCTION_VALUES.read_text()):
        assert "?sslmode=verify-full" in example
    production = yaml.safe_load(PRODUCTION_VALUES.read_text())
    assert production["databaseCA"]["existingSecret"]
    notes = helm.notes({"secrets": {"existingSecret": "keychain-credentials"}}).stdout
    assert "?sslmode=verify-full" in notes
