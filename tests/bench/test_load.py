"""bench/load.py's generators against a tiny HTTP server of the test's own: the keys, token and
body they send, the errors they count, and the early stop the sweep case relies on."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.load import Load, LoadGenerator, PythonLoad, Wrk

TOKEN = "bench-token"
BODY = b'{"token_data": {"value": "x"}}'
# The server answers 404 for key 13, so a load over keys 0-19 sees some errors.
MISSING_KEY = 13


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes, bytes]] = []  # method, path, head, body

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                body = await reader.readexactly(int(length[1]) if length else 0)
                self.requests.append((method, path, head, body))
                status = "404 Not Found" if path.endswith(f"/k{MISSING_KEY}/end") else "200 OK"
                writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok".encode())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    server = await asyncio.start_server(recorder.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield recorder, f"http://127.0.0.1:{port}"
    finally:
        server.close()


@pytest.fixture(params=["python", "wrk"])
def generator(request: pytest.FixtureRequest, tmp_path: Path) -> LoadGenerator:
    if request.param == "python":
        return PythonLoad()
    if (wrk := shutil.which("wrk")) is None:
        pytest.skip("wrk is not installed (Debian package wrk)")
    return Wrk(wrk, tmp_path / "bench.lua", threads=1)


async def test_random_keys_token_and_body_arrive(
    recorder: tuple[Recorder, str], generator: LoadGenerator
) -> None:
    server, url = recorder
    result = await generator.run(
        Load(url, "/api/k{i}/end", keys=20, method="POST", body=BODY, token=TOKEN), 1
    )
    assert result.requests > 20 and result.p50_ms <= result.p99_ms
    keys = {int(re.fullmatch(r"/api/k(\d+)/end", path)[1]) for _, path, _, _ in server.requests}  # type: ignore[index]
    assert keys <= set(range(20)) and len(keys) > 10
    for method, _, head, body in server.requests:
        assert method == "POST" and body == BODY
        assert f"\r\nAuthorization: Bearer {TOKEN}\r\n".encode() in head
    missing = sum(path.endswith(f"/k{MISSING_KEY}/end") for _, path, _, _ in server.requests)
    assert result.errors > 0 and abs(result.errors - missing) <= 32  # answers in flight at the end


async def test_a_fixed_path_and_an_early_stop(
    recorder: tuple[Recorder, str], generator: LoadGenerator
) -> None:
    server, url = recorder
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, stop.set)
    result = await asyncio.wait_for(generator.run(Load(url, "/ping"), 30, stop), 10)
    assert result.seconds < 5 and result.errors == 0
    assert {path for _, path, _, _ in server.requests} == {"/ping"}
    assert all(b"Authorization" not in head for _, _, head, _ in server.requests)


def test_only_127_0_0_1_is_loaded() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1 only"):
        Load("http://example.com", "/ping")
