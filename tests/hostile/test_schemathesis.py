"""schemathesis from the app's own OpenAPI document: no 5xx, and every answer is documented.

How the calls are made: schemathesis' ASGI transport (`from_asgi` + `case.call()`) drives the
app through starlette's TestClient, which runs it on an event loop of its own in another
thread. The test's asyncpg connection (one rolled-back transaction per test) belongs to the
test's loop and cannot be used from there. So schemathesis generates the cases from the
document and judges the answers (`case.validate_response`), while the requests go through
httpx.ASGITransport on the test's own loop, exactly like every other server test. Nothing is
committed: all examples of one test share its transaction, so later examples meet the rows
earlier ones wrote, and the lot is rolled back at the end.
"""

from __future__ import annotations

import base64
import os
from typing import Any
from urllib.parse import unquote

import pytest
import schemathesis
from hostile_support import ADMIN_TOKEN, BASE_URL, WORKER_TOKEN, bearer, tally
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.asgi import create_app
from app.settings import load_settings
from tests.conftest import TEST_SIGNING_KEYS


def _document() -> dict[str, Any]:
    """The document /schema/openapi.json serves (test_the_served_document_is_the_one_tested).

    Needed at collection time to make one test per operation; building the app opens nothing.
    """
    settings = load_settings(
        {},
        database_url="postgresql://unused",
        encryption_keys="unused:" + base64.b64encode(bytes(range(32))).decode(),
        api_tokens="doc:admin:doc-admin-token-0123456789abcdef",
        token_signing_keys=TEST_SIGNING_KEYS,
        sweep_interval_seconds=0,
    )
    return create_app(settings).openapi_schema.to_schema()


DOCUMENT = _document()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
# Who calls is the test's choice (CALLERS), not a generated Authorization header.
SCHEMA.config.generation.update(with_security_parameters=False)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


def _can_break(operation) -> bool:
    """Negative cases need a rule to break: /health and /ready take no input, and a cache key
    is documented as any string (the app's own key rules are checked in test_http_input.py)."""
    constrained_path = any(
        p.definition["schema"].get("type") != "string" for p in operation.path_parameters
    )
    return bool(operation.body or list(operation.query)) or constrained_path


BREAKABLE = [op for op in OPERATIONS if _can_break(op)]
# Bounded so the suite stays quick; raise it for a deeper hunt (KEYCHAIN_HOSTILE_EXAMPLES=1000).
EXAMPLES_PER_TEST = int(os.environ.get("KEYCHAIN_HOSTILE_EXAMPLES", "50"))

RESPONSE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Who sends the request when tokens are configured; mostly the admin, so most examples get
# past the guard, but enough of the others to meet every 401 and 403.
CALLERS = ["admin", "admin", "admin", "worker", "wrong token", "no token"]
CALLER_HEADERS = {
    "admin": bearer(ADMIN_TOKEN),
    "worker": bearer(WORKER_TOKEN),
    "wrong token": bearer("not-a-configured-token-12345"),
    "no token": {},
}

fuzz = settings(
    max_examples=EXAMPLES_PER_TEST,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # the client and its transaction span all examples
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
cases = pytest.mark.parametrize(
    ("operation", "mode"),
    [(op, GenerationMode.POSITIVE) for op in OPERATIONS]
    + [(op, GenerationMode.NEGATIVE) for op in BREAKABLE],
    ids=lambda value: value.label if hasattr(value, "label") else str(value),
)


async def _send(client, case, headers: dict[str, str] | None):
    """Send a schemathesis case through httpx, on this loop; answer the httpx response."""
    kwargs = case.as_transport_kwargs(base_url=BASE_URL)
    sent_headers = dict(kwargs.get("headers") or {})
    if headers is not None:  # the caller decides who is calling, replacing any generated auth
        sent_headers = {k: v for k, v in sent_headers.items() if k.lower() != "authorization"}
        sent_headers.update(headers)
    unknown = set(kwargs) - {"method", "url", "headers", "params", "cookies", "json", "data"}
    assert not unknown, f"case needs transport arguments this test does not send: {unknown}"
    body: dict[str, Any] = {}
    if "json" in kwargs:
        body["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        body["content"] = data.encode() if isinstance(data, str) else data
    for name, value in (kwargs.get("cookies") or {}).items():
        client.cookies.set(name, value)
    try:
        return await client.request(
            kwargs["method"],
            kwargs["url"],
            headers=sent_headers,
            params=kwargs.get("params"),
            **body,
        )
    finally:
        client.cookies.clear()


async def _exercise(client, operation, mode, data, *, auth: str, caller: str | None) -> None:
    case = data.draw(operation.as_strategy(generation_mode=mode), label="case")
    response = await _send(client, case, CALLER_HEADERS[caller] if caller else None)
    tally(f"schemathesis {auth:<6} {mode.value:<8} {operation.label}", response.status_code)
    checks = RESPONSE_CHECKS + (
        [negative_data_rejection] if mode is GenerationMode.NEGATIVE else []
    )
    case.validate_response(response, checks=checks, headers=dict(response.request.headers))
    if (
        operation.path == "/api/auth-cache/{cache_key}"
        and operation.method.upper() == "POST"
        and mode is GenerationMode.POSITIVE
        and response.status_code in (200, 201)
    ):
        await _read_back(client, case, response)


async def _read_back(client, case, written) -> None:
    """Whatever a write accepted reads back as written, under the very key it was sent to."""
    auth = {k: v for k, v in written.request.headers.items() if k == "authorization"}
    read = await client.get(written.request.url, headers=auth)
    get_operation = SCHEMA[case.operation.path]["GET"]
    get_operation.Case(path_parameters=case.path_parameters).validate_response(
        read, checks=RESPONSE_CHECKS
    )
    assert read.status_code == 200, read.text
    # schemathesis keeps path parameters percent-encoded; one leading '/' belongs to the route.
    sent_key = unquote(case.path_parameters["cache_key"]).removeprefix("/")
    assert written.json()["cache_key"] == read.json()["cache_key"] == sent_key
    assert read.json()["data"] == case.body["token_data"]


@fuzz
@cases
@given(data=st.data())
async def test_open_api_answers_as_documented(client, operation, mode, data):
    await _exercise(client, operation, mode, data, auth="open", caller=None)


@fuzz
@cases
@given(data=st.data())
async def test_secured_api_answers_as_documented(secured, operation, mode, data):
    caller = data.draw(st.sampled_from(CALLERS), label="caller")
    await _exercise(secured, operation, mode, data, auth="token", caller=caller)


async def test_the_served_document_is_the_one_tested(client):
    served = await client.get("/schema/openapi.json")
    assert served.status_code == 200
    assert served.json() == DOCUMENT
