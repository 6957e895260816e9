"""The `keychain` command as an operator runs it: a real process, real databases, exit codes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from importlib.metadata import version

import pytest
from sqlalchemy import func, update
from sqlalchemy.engine import make_url

from app.auth import TokenTable
from app.cli import EXIT_CANNOT_LISTEN, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, main
from app.crypto import KeyRing
from app.db.tables import keychain as keychain_table
from tests.bodies import entry_body
from tests.conftest import TEST_KEY, TEST_KEY_ID, CommittedDatabase, _admin, asgi_client, free_port

SECRET = "sk-stats-secret-0123456789"


def keychain(cwd, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI in its own process, in `cwd`, with no KEYCHAIN_* setting but the ones given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYCHAIN_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _fill(committed: CommittedDatabase) -> None:
    """Write and read entries through the real app, committed, then expire one with SQL."""
    writes = {
        "openai:101": {"execution_id": 101},
        "openai:102": {"execution_id": 102, "parent_execution_id": 101},
        "tok:global:bearer": {"cache_type": "token", "scope_type": "global"},
        "cfg:global": {"cache_type": "config", "scope_type": "global"},
    }
    reads = {"openai:101": 3, "openai:102": 1, "tok:global:bearer": 5, "cfg:global": 2}
    async with committed.client() as client:
        for key, fields in writes.items():
            answer = await client.post(
                f"/api/auth-cache/{key}", json=entry_body({"api_key": SECRET}, **fields)
            )
            assert answer.status_code == 200
        for key, times in reads.items():
            for _ in range(times):
                assert (await client.get(f"/api/auth-cache/{key}")).status_code == 200
    async with committed.database.engine.begin() as conn:
        await conn.execute(
            update(keychain_table)
            .where(keychain_table.c.cache_key == "cfg:global")
            .values(expires_at=func.now() - timedelta(minutes=1))
        )


async def test_stats_json_reports_committed_rows(repo_root, committed):
    await _fill(committed)

    done = keychain(repo_root, "stats", "--json", "--top", "2", KEYCHAIN_DATABASE_URL=committed.url)
    assert done.returncode == EXIT_OK, done.stderr
    assert SECRET not in done.stdout
    stats = json.loads(done.stdout)
    assert stats["live_entries"] == 3
    assert stats["live_by_scope"] == {"execution": 2, "global": 1, "session": 0}
    assert stats["live_by_cache_type"] == {"secret": 2, "token": 1, "config": 0}
    assert stats["expired_unswept"] == 1
    assert stats["hits"] == 11
    groups = {
        (g["scope_type"], g["cache_type"]): (g["live"], g["expired_unswept"], g["hits"])
        for g in stats["by_scope_and_cache_type"]
    }
    assert groups == {
        ("execution", "secret"): (2, 0, 4),
        ("global", "config"): (0, 1, 2),
        ("global", "token"): (1, 0, 5),
    }
    top = stats["top_keys"]
    assert [(k["cache_key"], k["access_count"], k["expired"]) for k in top] == [
        ("tok:global:bearer", 5, False),
        ("openai:101", 3, False),
    ]
    assert "data" not in top[0] and top[0]["expires_at"]


async def test_stats_text_is_a_readable_summary(repo_root, committed):
    await _fill(committed)
    done = keychain(repo_root, "stats", KEYCHAIN_DATABASE_URL=committed.url)
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout.startswith("live entries: 3   expired, not yet swept: 1   hits: 11")
    assert "top 4 keys by access count:" in done.stdout
    assert "tok:global:bearer" in done.stdout and SECRET not in done.stdout
    # Tables with a header, a row per group and per key, each on one line.
    assert re.search(r"^scope\s+cache_type\s+live\s+expired\s+hits$", done.stdout, re.M)
    assert re.search(
        r"^\s*5\s+global\s+token\s+live\s+\S+\s+tok:global:bearer\s*$", done.stdout, re.M
    )


@pytest.mark.parametrize("command", ["migrate", "sweep", "stats", "rotate-keys"])
def test_an_unreachable_database_is_one_line_and_exit_code_3(repo_root, command):
    url = f"postgresql://keychain:pw-not-for-logs@127.0.0.1:{free_port()}/keychain"
    keys = "k1:" + base64.b64encode(bytes(range(32))).decode()  # rotate-keys needs a key ring first
    done = keychain(repo_root, command, KEYCHAIN_DATABASE_URL=url, KEYCHAIN_ENCRYPTION_KEYS=keys)
    assert done.returncode == EXIT_UNAVAILABLE
    assert done.stderr.count("\n") == 1, done.stderr
    where = "postgresql://keychain:***@127.0.0.1:"
    assert done.stderr.startswith(f"keychain {command}: cannot reach the database at {where}")
    assert "pw-not-for-logs" not in done.stderr


def test_a_database_that_was_never_migrated_says_to_migrate(repo_root, make_empty_database):
    done = keychain(repo_root, "stats", KEYCHAIN_DATABASE_URL=make_empty_database())
    assert done.returncode == EXIT_FAILED
    assert done.stderr.count("\n") == 1 and "run 'keychain migrate' first" in done.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"KEYCHAIN_DATABASE_URL": "mysql://root:pw@db/keychain"},
            "unsupported database URL scheme",
        ),
        (
            {"KEYCHAIN_DATABASE_URL": "not a url :pw-not-for-logs"},
            "KEYCHAIN_DATABASE_URL is not a URL",
        ),
        ({"KEYCHAIN_SWEEP_BATCH_SIZE": "many"}, "sweep_batch_size"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_code_1(repo_root, env, message):
    done = keychain(repo_root, "sweep", **env)
    assert done.returncode == EXIT_FAILED
    assert done.stderr.count("\n") == 1 and message in done.stderr
    assert "pw-not-for-logs" not in done.stderr


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["migrate"],
        ["sweep"],
        ["stats"],
        ["rotate-keys"],
        ["mint-token"],
        ["purge"],
        ["keys", "new"],
        ["tokens", "new"],
    ],
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: keychain {' '.join(command)}".rstrip())
    if command:
        # A description of its own, beyond argparse's usage and options.
        assert len(out.split("\n\n")[1]) > 40


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "--top", "-1"],
        ["stats", "--top", "x"],
        ["nonsense"],
        [],
        ["keys"],
        ["keys", "new", "a b"],
        ["tokens", "new", "ci-worker"],
        ["tokens", "new", "ci worker", "worker"],
        ["tokens", "new", "ci", "root"],
    ],
)
def test_bad_usage_is_exit_code_2(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert "usage: keychain" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        (
            {"KEYCHAIN_API_TOKENS": "ops:admin:ops-admin-token-0123456789"},
            "KEYCHAIN_ENCRYPTION_KEYS",
        ),
        (
            {"KEYCHAIN_ENCRYPTION_KEYS": "k1:" + base64.b64encode(bytes(range(32))).decode()},
            "KEYCHAIN_API_TOKENS",
        ),
    ],
)
def test_serve_refuses_a_shared_database_without_keys_or_tokens(repo_root, env, missing):
    url = f"postgresql://keychain@127.0.0.1:{free_port()}/keychain"
    done = keychain(repo_root, "serve", KEYCHAIN_DATABASE_URL=url, **env)
    assert done.returncode == EXIT_FAILED
    assert done.stderr.startswith(f"keychain serve: {missing} is required")
    assert "t" * 20 not in done.stderr


async def test_mint_token_prints_a_token_the_server_accepts(repo_root, committed, test_settings):
    done = keychain(
        repo_root,
        "mint-token",
        "--execution-id",
        "42",
        "--read",
        "crm",
        "--ttl",
        "600",
        KEYCHAIN_DATABASE_URL=committed.url,
        KEYCHAIN_TOKEN_SIGNING_KEYS=test_settings.token_signing_keys,
    )
    assert done.returncode == EXIT_OK, done.stderr
    token = done.stdout.strip()
    assert "execution 42, expires" in done.stderr and token not in done.stderr
    async with committed.client(api_tokens="") as client:
        headers = {"Authorization": f"Bearer {token}"}
        for execution_id, status in ((42, 200), (43, 403)):
            answer = await client.post(
                f"/api/auth-cache/k:{execution_id}",
                json=entry_body({"v": 1}, execution_id=execution_id),
                headers=headers,
            )
            assert answer.status_code == status


def test_mint_token_without_a_signing_key_says_what_to_set(repo_root, own_database):
    done = keychain(
        repo_root, "mint-token", "--execution-id", "1", KEYCHAIN_DATABASE_URL=own_database
    )
    assert done.returncode == EXIT_FAILED
    assert done.stderr == (
        "keychain mint-token: execution tokens are not enabled on this server: set KEYCHAIN_TOKEN_SIGNING_KEYS\n"
    )


@pytest.fixture
def unprivileged_url(own_database, postgres_server_url) -> Iterator[str]:
    """The migrated database, as a role that may log in and nothing more."""
    role = f"keychain_noaccess_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(postgres_server_url, f'CREATE ROLE "{role}" LOGIN'))
    try:
        yield (
            make_url(own_database)
            .set(username=role, password=None)
            .render_as_string(hide_password=False)
        )
    finally:
        asyncio.run(_admin(own_database, f'DROP OWNED BY "{role}"'))
        asyncio.run(_admin(postgres_server_url, f'DROP ROLE IF EXISTS "{role}"'))


def test_an_error_of_the_database_that_is_no_outage_is_one_line_not_a_hang(
    repo_root, unprivileged_url, test_settings
):
    # Permission denied (42501) is neither an outage nor a caller's mistake: it used to become its
    # own __cause__, and the error printer, following causes, never returned.
    done = keychain(repo_root, "stats", KEYCHAIN_DATABASE_URL=unprivileged_url)
    assert done.returncode == EXIT_FAILED
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"answered: permission denied for schema {test_settings.db_schema}" in done.stderr


def test_serve_on_a_port_already_served_says_so_and_exits_4(repo_root, own_database):
    # granian binds with SO_REUSEPORT: unchecked, a second server would quietly share the port.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = keychain(repo_root, "serve", "--port", str(port), KEYCHAIN_DATABASE_URL=own_database)
    assert done.returncode == EXIT_CANNOT_LISTEN
    assert done.stderr.strip().splitlines()[-1] == (
        f"keychain serve: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(another server is running there? set KEYCHAIN_PORT or --port)"
    )


def test_version_is_the_installed_distributions(repo_root):
    done = keychain(repo_root, "--version")
    assert done.returncode == EXIT_OK
    assert done.stdout == f"keychain {version('keychain')}\n"


async def test_keys_new_prints_an_entry_the_server_seals_with(tmp_path, make_app):
    first, second = keychain(tmp_path, "keys", "new", "k9"), keychain(tmp_path, "keys", "new", "k9")
    assert first.returncode == second.returncode == EXIT_OK, first.stderr
    entry = first.stdout.strip()
    assert first.stdout.count("\n") == 1 and entry.startswith("k9:")
    assert entry != second.stdout.strip()  # fresh random bytes each time
    assert "KEYCHAIN_ENCRYPTION_KEYS" in first.stderr and "rotate-keys" in first.stderr
    assert entry not in first.stderr
    # As the newest key, in front of the one that sealed the old rows.
    async with asgi_client(make_app(encryption_keys=f"{entry},{TEST_KEY_ID}:{TEST_KEY}")) as client:
        written = await client.post("/api/auth-cache/fresh:global", json=entry_body({"v": 1}))
        assert written.status_code == 200 and written.json()["key_id"] == "k9"
        assert (await client.get("/api/auth-cache/fresh:global")).json()["data"] == {"v": 1}
    assert list(tmp_path.iterdir()) == []  # nothing stored


def test_keys_new_without_an_id_names_the_key_by_its_date(tmp_path):
    done = keychain(tmp_path, "keys", "new")
    assert done.returncode == EXIT_OK
    key_id, _, _ = done.stdout.strip().partition(":")
    assert re.fullmatch(r"k\d{14}", key_id), key_id
    KeyRing.parse(done.stdout.strip())  # well-formed, and passes the server's placeholder checks


async def test_tokens_new_prints_a_token_and_the_entry_that_lets_it_in(tmp_path, make_app):
    done = keychain(tmp_path, "tokens", "new", "ops@example.com", "admin")
    assert done.returncode == EXIT_OK, done.stderr
    token, entry = done.stdout.splitlines()
    assert entry.startswith("ops@example.com:admin:sha256:") and token not in entry
    assert token not in done.stderr and "KEYCHAIN_API_TOKENS" in done.stderr
    async with asgi_client(make_app(api_tokens=entry, allow_open_api=False)) as client:
        assert (await client.get("/api/auth-cache")).status_code == 401
        answer = await client.get("/api/auth-cache", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
    # The plain form is a valid entry too: the token passes the server's placeholder checks.
    TokenTable.parse(f"ops:admin:{token}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [
        ["stats"],
        ["sweep"],
        ["rotate-keys"],
        ["mint-token", "--execution-id", "1"],
        ["purge", "openai"],
    ],
)
def test_commands_on_existing_data_say_no_embedded_database_is_there_and_create_none(
    tmp_path, command
):
    done = keychain(tmp_path, *command)
    assert done.returncode == EXIT_FAILED
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        f"keychain {command[0]}: no embedded database in the data directory {tmp_path.resolve() / '.keychain'}: "
    )
    assert "KEYCHAIN_DATA_DIR" in done.stderr and "KEYCHAIN_DATABASE_URL" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no PostgreSQL, no key file


def test_the_data_directory_named_is_the_one_set(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    done = keychain(tmp_path, "stats", KEYCHAIN_DATA_DIR=str(elsewhere))
    assert done.returncode == EXIT_FAILED
    assert f"no embedded database in the data directory {elsewhere}:" in done.stderr
    assert not elsewhere.exists()
