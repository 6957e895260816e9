"""Secrets never leak: not into any log record of a full request cycle, not into any error
answer, not into the OpenAPI document."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hostile_support import ADMIN_TOKEN, API_TOKENS, WORKER_TOKEN, asgi_client, bearer
from sqlalchemy import func, update

from app.db.tables import keychain
from app.logs import JsonFormatter, TextFormatter

SECRET = "sk-live-7Qm2vX9rLk4Tz8Np"
REFRESH = "rt-4f9e2a7c1b8d"
WRONG_TOKEN = "wk-looks-real-but-is-not-0f3a9c"
NEVER_SEEN = [SECRET, REFRESH, WORKER_TOKEN, ADMIN_TOKEN, WRONG_TOKEN]


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def open_up(self) -> None:
        """Root at DEBUG. Called by the test itself: pytest sets the root level (log_level)
        afresh for each phase, so a level set by a fixture is gone by the time the test runs."""
        logging.getLogger().setLevel(logging.DEBUG)

    def emit(self, record: logging.LogRecord) -> None:
        if not any(record is seen for seen in self.records):  # root and audit both see some
            self.records.append(record)


@pytest.fixture
def all_logs() -> Iterator[Capture]:
    """Every record at DEBUG and up, from every logger, and from the audit logger even when
    app.logs has made it stop propagating. SQLAlchemy keeps its own loggers at WARNING; they
    are opened up too, so every statement and its parameters are in the capture (requested
    before `connection`: SQLAlchemy decides per connection whether to log)."""
    capture = Capture()
    loggers = [
        logging.getLogger(),
        logging.getLogger("keychain.audit"),
        logging.getLogger("sqlalchemy"),
    ]
    saved = [(logger, logger.level) for logger in loggers]
    for logger in loggers:
        logger.addHandler(capture)
        logger.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        for logger, level in saved:
            logger.removeHandler(capture)
            logger.setLevel(level)


def leaks(blob: str) -> list[str]:
    return [secret for secret in NEVER_SEEN if secret in blob]


def record_texts(record: logging.LogRecord) -> Iterator[str]:
    """The message, its arguments, every extra field, the traceback, and the formatted lines."""
    yield record.getMessage()
    yield repr(record.args)
    yield repr(record.__dict__)
    yield JsonFormatter().format(record)
    yield TextFormatter().format(record)


async def test_a_full_request_cycle_logs_no_secret_and_no_token(all_logs, make_app, connection):
    all_logs.open_up()
    app = make_app(api_tokens=API_TOKENS, max_body_bytes=4096)
    body = {
        "token_data": {"access_token": SECRET, "refresh_token": REFRESH, "token_type": "bearer"},
        "credential_type": "oauth2_client_credentials",
        "cache_type": "token",
        "ttl_seconds": "3300",
    }
    worker, admin = bearer(WORKER_TOKEN), bearer(ADMIN_TOKEN)
    errors = []
    async with asgi_client(app, client=("10.9.8.7", 4444)) as client:

        async def call(method, path, *, expect, **kwargs):
            answer = await client.request(method, path, **kwargs)
            assert answer.status_code == expect, (method, path, answer.text)
            if answer.status_code >= 400:
                errors.append(answer)
            return answer

        key = "/api/auth-cache/openai:global:bearer"
        await call("POST", key, json=body, headers=worker, expect=200)
        await call("POST", key, json=body, headers=worker, expect=200)  # replace
        hit = await call("GET", key, headers=worker, expect=200)
        assert hit.json()["data"]["access_token"] == SECRET  # the one place it belongs
        await call("GET", "/api/auth-cache/never-written", headers=worker, expect=404)
        await call("POST", "/api/auth-cache/soon-old", json=body, headers=worker, expect=200)
        await connection.execute(
            update(keychain)
            .where(keychain.c.cache_key == "soon-old")
            .values(expires_at=func.now() - timedelta(seconds=1))
        )
        await call("GET", "/api/auth-cache/soon-old", headers=worker, expect=404)
        # Validation errors with the secret in the body.
        for bad in (
            {**body, "token_data": SECRET},
            {**body, "token_data": [SECRET, REFRESH]},
            {**body, "unknown_field": SECRET},
            {**body, "ttl_seconds": -1},
            {**body, "expires_at": "2001-01-01T00:00:00Z"},
            {**body, "scope_type": "execution"},
            {**body, "execution_id": 2**64},
        ):
            await call("POST", key, json=bad, headers=worker, expect=400)
        malformed = json.dumps(body).encode()[:-5]
        await call(
            "POST",
            key,
            content=malformed,
            headers={**worker, "content-type": "application/json"},
            expect=400,
        )
        too_big = {**body, "token_data": {**body["token_data"], "padding": "p" * 5000}}
        await call("POST", key, json=too_big, headers=worker, expect=413)
        deep = (
            b'{"token_data": {"t": "'
            + SECRET.encode()
            + b'", "d": '
            + b"[" * 1500
            + b"]" * 1500
            + b"}}"
        )
        await call(
            "POST",
            key,
            content=deep,
            headers={**worker, "content-type": "application/json"},
            expect=400,
        )
        # Auth failures: a wrong token, no token, a token sent without the scheme, the wrong role.
        await call("GET", key, headers=bearer(WRONG_TOKEN), expect=401)
        await call("POST", key, json=body, headers=bearer(WRONG_TOKEN), expect=401)
        await call("GET", key, expect=401)
        await call("GET", key, headers={"Authorization": WORKER_TOKEN}, expect=401)
        await call("GET", "/api/auth-cache", headers=worker, expect=403)
        # A tampered row.
        last = func.length(keychain.c.data) - 1
        flipped = func.get_byte(keychain.c.data, last).op("#")(1)
        await connection.execute(
            update(keychain)
            .where(keychain.c.cache_key == "openai:global:bearer")
            .values(data=func.set_byte(keychain.c.data, last, flipped))
        )
        await call("GET", key, headers=worker, expect=409)
        # Admin calls, a delete, a cleanup.
        listed = await call(
            "GET", "/api/auth-cache", params={"include_expired": "true"}, headers=admin, expect=200
        )
        assert not leaks(listed.text)
        await call("DELETE", key, headers=worker, expect=204)
        await call("DELETE", "/api/executions/7/auth-cache", headers=admin, expect=200)

    # No error answer echoes the payload or a token.
    for answer in errors:
        assert not leaks(answer.text), (answer.request.method, answer.request.url, answer.text)
        assert "access_token" not in answer.text and "refresh_token" not in answer.text

    # No log record does, however it is looked at.
    records = all_logs.records
    for record in records:
        for blob in record_texts(record):
            assert not leaks(blob), (record.name, record.getMessage(), blob[:500])

    # The capture saw the whole cycle (a test that captured nothing would pass, too).
    messages = [record.getMessage() for record in records]
    for expected in (
        "cache write",
        "cache hit",
        "cache miss",
        "unreadable entry",
        "cache delete",
        "audit",
    ):
        assert expected in messages, expected
    assert any(record.levelno == logging.DEBUG for record in records), (
        "DEBUG records were not captured"
    )
    audit = [r for r in records if r.name == "keychain.audit"]
    assert {r.outcome for r in audit} == {"ok", "failed", "denied"}
    assert any(r.name.startswith("sqlalchemy.engine") for r in records), (
        "SQL statement logging was off"
    )


async def test_the_openapi_document_holds_no_real_looking_secret(secured):
    document = (await secured.get("/schema/openapi.json")).text
    assert not leaks(document)
    assert WORKER_TOKEN not in document and ADMIN_TOKEN not in document

    def example_strings(node, inside=False):
        if isinstance(node, dict):
            for name, value in node.items():
                yield from example_strings(
                    value, inside or name in ("example", "examples", "default")
                )
        elif isinstance(node, list):
            for value in node:
                yield from example_strings(value, inside)
        elif isinstance(node, str) and inside:
            yield node

    strings = list(example_strings(json.loads(document)))
    assert "<access token>" in strings  # the documented example is a visible placeholder
    assert [s for s in strings if looks_real(s)] == []


KNOWN_FORMATS = re.compile(
    r"sk-[A-Za-z0-9]{8,}|gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|ya29\.|xox[abprs]-"
    r"|eyJ[A-Za-z0-9_-]{10,}|AIza[0-9A-Za-z_-]{20,}|-----BEGIN"
)
RANDOM_LOOKING = re.compile(r"[A-Za-z0-9+/=_-]{20,}")


def looks_real(value: str) -> bool:
    """A known credential format, or a long run mixing digits, upper and lower case."""
    if KNOWN_FORMATS.search(value):
        return True
    return any(
        re.search(r"\d", run) and re.search(r"[a-z]", run) and re.search(r"[A-Z]", run)
        for run in RANDOM_LOOKING.findall(value)
    )


@pytest.mark.parametrize(
    ("value", "real"),
    [
        ("<access token>", False),
        ("oauth2_client_credentials", False),
        ("projects/123/secrets/openai-api-key/versions/1", False),
        (SECRET, True),
        ("ghp_" + "a1B2" * 9, True),
        ("AKIAIOSFODNN7EXAMPLE", True),
        ("Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA==", True),
    ],
)
def test_the_secret_detector_tells_placeholders_from_credentials(value, real):
    assert looks_real(value) is real
