"""Request ids on every response and log line; JSON logs that parse and never hold a secret."""

from __future__ import annotations

import json
import logging
import re

import msgspec
import pytest

from app.logs import JsonFormatter, TextFormatter, configure_logging, request_id
from tests.bodies import entry_body
from tests.conftest import asgi_client

SECRET = "sk-logging-secret-0123456789"
BODY = entry_body({"api_key": SECRET})
GENERATED = re.compile(r"^[0-9a-f]{32}$")


async def test_a_request_id_is_generated_when_none_is_sent(client):
    answer = await client.get("/health")
    assert GENERATED.match(answer.headers["x-request-id"])
    other = await client.get("/health")
    assert other.headers["x-request-id"] != answer.headers["x-request-id"]


@pytest.mark.parametrize("rid", ["wf-1234.step_7-abc", "x" * 64])
async def test_a_sane_incoming_request_id_is_echoed(client, rid):
    answer = await client.get("/api/auth-cache/nothing", headers={"X-Request-ID": rid})
    assert answer.status_code == 404
    assert answer.headers["x-request-id"] == rid
    assert request_id.get() is None  # reset once the request is over


@pytest.mark.parametrize("sent", ["x" * 65, "has space", "semi;colon", "a/b", "ünïcode", ""])
async def test_an_insane_incoming_request_id_is_replaced(client, sent):
    answer = await client.get("/health", headers={"X-Request-ID": sent.encode()})
    assert GENERATED.match(answer.headers["x-request-id"])


async def test_hit_miss_and_audit_records_carry_the_request_id(client, caplog):
    await client.post("/api/auth-cache/k", json=BODY, headers={"X-Request-ID": "req-write"})
    await client.get("/api/auth-cache/k", headers={"X-Request-ID": "req-hit"})
    await client.get("/api/auth-cache/absent", headers={"X-Request-ID": "req-miss"})

    by_message = {}
    for record in caplog.records:
        by_message.setdefault(record.getMessage(), []).append(record)
    assert [r.request_id for r in by_message["cache hit"]] == ["req-hit"]
    assert [(r.request_id, r.reason) for r in by_message["cache miss"]] == [("req-miss", "absent")]
    assert [r.request_id for r in by_message["cache write"]] == ["req-write"]
    audit = [r for r in caplog.records if r.name == "keychain.audit"]
    assert [r.request_id for r in audit] == ["req-write"]


async def test_json_lines_parse_and_hold_no_secret(client, caplog):
    await client.post("/api/auth-cache/k", json=BODY, headers={"X-Request-ID": "req-json"})
    await client.get("/api/auth-cache/k", headers={"X-Request-ID": "req-json"})
    await client.get("/api/auth-cache/gone", headers={"X-Request-ID": "req-json"})

    lines = [JsonFormatter().format(r) for r in caplog.records]
    parsed = [json.loads(line) for line in lines]
    hit = next(p for p in parsed if p["message"] == "cache hit")
    assert hit["request_id"] == "req-json" and hit["cache_key"] == "k" and hit["level"] == "INFO"
    assert {"cache hit", "cache miss", "cache write", "audit"} <= {p["message"] for p in parsed}
    text_lines = [TextFormatter().format(r) for r in caplog.records]
    for line in lines + text_lines:
        assert SECRET not in line


@pytest.fixture
def restore_logging():
    root, audit = logging.getLogger(), logging.getLogger("keychain.audit")
    saved = (root.handlers[:], root.level, audit.handlers[:], audit.propagate, audit.level)
    yield
    root.handlers[:], audit.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    audit.propagate = saved[3]
    audit.setLevel(saved[4])


async def test_keychain_log_format_json_writes_json_lines_to_stderr(
    make_app, test_settings, capsys, restore_logging
):

    configure_logging(msgspec.structs.replace(test_settings, log_format="json"))
    app = make_app()
    async with asgi_client(app) as client:
        await client.post("/api/auth-cache/k", json=BODY, headers={"X-Request-ID": "req-stderr"})
        await client.get("/api/auth-cache/k", headers={"X-Request-ID": "req-stderr"})
    err = capsys.readouterr().err
    assert SECRET not in err
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    hit = next(r for r in records if r["message"] == "cache hit")
    assert hit["request_id"] == "req-stderr" and hit["logger"] == "app.keychain.service"
    assert any(r["message"] == "audit" and r["request_id"] == "req-stderr" for r in records)


async def test_log_level_warning_quiets_the_hit_lines_but_never_the_audit_trail(
    make_app, test_settings, capsys, restore_logging
):
    configure_logging(msgspec.structs.replace(test_settings, log_level="WARNING"))
    app = make_app()
    async with asgi_client(app) as client:
        await client.post("/api/auth-cache/k:global", json=BODY)
        await client.get("/api/auth-cache/k:global")
        app.state.runtime.process.read_audit.flush()
    err = capsys.readouterr().err
    assert "cache hit" not in err and "cache write" not in err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert {(e["audit_action"], e["outcome"]) for e in events} == {
        ("putEntry", "ok"),
        ("getEntry", "hit"),
    }


async def test_the_line_per_read_can_be_turned_off_and_reads_stay_audited(make_app, caplog):
    from tests.conftest import asgi_client

    app = make_app(log_reads=False)
    async with asgi_client(app) as client:
        await client.post(
            "/api/auth-cache/quiet:global",
            json=entry_body({"v": 1}),
        )
        with caplog.at_level(logging.INFO):
            assert (await client.get("/api/auth-cache/quiet:global")).status_code == 200
            assert (await client.get("/api/auth-cache/nothing:global")).status_code == 404
            app.state.runtime.process.read_audit.flush()
    assert not [r for r in caplog.records if r.getMessage() in ("cache hit", "cache miss")]
    audited = {
        (cache_key, r.outcome)
        for r in caplog.records
        if getattr(r, "audit_action", None) == "getEntry"
        for cache_key in r.reads
    }
    assert audited == {("quiet:global", "hit"), ("nothing:global", "absent")}


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_uvicorns_colour_codes_stay_out_of_log_lines(formatter):
    # What uvicorn logs as it starts: the message, and again with ANSI colours as an extra.
    record = logging.getLogger("uvicorn.error").makeRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        "Started server process [%d]",
        (4242,),
        None,
        extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]", "port": 8082},
    )
    line = formatter.format(record)
    assert "Started server process [4242]" in line
    assert "color_message" not in line and "\x1b" not in line and "\\u001b" not in line
    assert "8082" in line  # other extras still shown
