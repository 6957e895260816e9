"""Load generators: wrk when it is installed, else one of the bench's own (asyncio, raw sockets).

Both keep CONNECTIONS keep-alive connections busy against 127.0.0.1 for a bounded time, draw
each request's key at random, and answer requests per second, p50 and p99.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

CONNECTIONS = 32
# A response slower than this counts as an error rather than stalling the case.
REQUEST_TIMEOUT_S = 5.0
KEY_INDEX = "{i}"

WRK_SCRIPT = """\
-- bench/load.py: a random key per request, an optional bearer token, a JSON summary.
local prefix, suffix, keys, method, body
function init(args)
  prefix, suffix, keys, method = args[1], args[2], tonumber(args[3]), args[4]
  if args[5] ~= "" then wrk.headers["Authorization"] = "Bearer " .. args[5] end
  if args[6] ~= "" then
    body = args[6]
    wrk.headers["Content-Type"] = "application/json"
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end
function request()
  local path = prefix
  if keys > 0 then path = prefix .. math.random(0, keys - 1) .. suffix end
  return wrk.format(method, path, nil, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass(frozen=True)
class Load:
    base_url: str
    # KEY_INDEX in the path is replaced per request by a random index below `keys`.
    path: str
    keys: int = 1
    method: str = "GET"
    body: bytes = b""
    token: str | None = None

    def __post_init__(self) -> None:
        if urlsplit(self.base_url).hostname != "127.0.0.1":
            raise ValueError(f"the bench loads 127.0.0.1 only, not {self.base_url}")

    def split_path(self) -> tuple[str, str, int]:
        """(prefix, suffix, keys); keys 0 when the path names one fixed key."""
        prefix, found, suffix = self.path.partition(KEY_INDEX)
        return (prefix, suffix, self.keys) if found else (prefix, "", 0)


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    # Transport errors, timeouts and non-2xx answers: a hit case with any measured something else.
    errors: int

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class LoadGenerator(Protocol):
    name: str

    async def run(
        self, load: Load, seconds: float, stop: asyncio.Event | None = None
    ) -> LoadResult:
        """`seconds` of load, or less when `stop` is set first."""
        ...


class Wrk:
    def __init__(self, executable: str, script: Path, threads: int) -> None:
        self._executable, self._script, self._threads = executable, script, threads
        script.write_text(WRK_SCRIPT)
        self.name = f"wrk ({threads} threads, {CONNECTIONS} connections)"

    async def run(
        self, load: Load, seconds: float, stop: asyncio.Event | None = None
    ) -> LoadResult:
        prefix, suffix, keys = load.split_path()
        process = await asyncio.create_subprocess_exec(
            self._executable,
            f"-t{self._threads}",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={REQUEST_TIMEOUT_S:.0f}s",
            f"-s{self._script}",
            load.base_url + "/",
            "--",
            prefix,
            suffix,
            str(keys),
            load.method,
            load.token or "",
            load.body.decode(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        communicate = asyncio.ensure_future(process.communicate())
        if stop is not None:
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({communicate, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not communicate.done():
                process.send_signal(signal.SIGINT)  # wrk stops early on SIGINT and still reports
        out, err = await asyncio.wait_for(communicate, seconds + 30)
        for line in out.decode().splitlines():
            if line.startswith("BENCH_JSON "):
                summary = json.loads(line.removeprefix("BENCH_JSON "))
                return LoadResult(
                    requests=summary["requests"],
                    seconds=summary["duration_us"] / 1e6,
                    p50_ms=summary["p50_us"] / 1000,
                    p99_ms=summary["p99_us"] / 1000,
                    errors=summary["errors"],
                )
        raise RuntimeError(
            f"wrk gave no summary (exit {process.returncode}): {err.decode()[-500:]}"
        )


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


def _request_bytes(load: Load, path: str) -> bytes:
    auth = f"Authorization: Bearer {load.token}\r\n" if load.token else ""
    head = (
        f"{load.method} {path} HTTP/1.1\r\nHost: {urlsplit(load.base_url).netloc}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(load.body)}\r\n\r\n"
    )
    return head.encode() + load.body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bytes:
    """Send one request on a keep-alive connection; its response's head."""
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        writer.write(request)
        response_head = await reader.readuntil(b"\r\n\r\n")
        length = _CONTENT_LENGTH.search(response_head)
        await reader.readexactly(int(length[1]) if length else 0)
    return response_head


class PythonLoad:
    name = f"the bench's own (Python asyncio, raw sockets, {CONNECTIONS} connections)"

    async def run(
        self, load: Load, seconds: float, stop: asyncio.Event | None = None
    ) -> LoadResult:
        stop = stop or asyncio.Event()
        url = urlsplit(load.base_url)
        prefix, suffix, keys = load.split_path()
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + seconds

        async def connection() -> None:
            nonlocal errors
            reader, writer = await asyncio.open_connection(url.hostname, url.port)
            try:
                while time.perf_counter() < deadline and not stop.is_set():
                    path = f"{prefix}{random.randrange(keys)}{suffix}" if keys else prefix
                    started = time.perf_counter()
                    response_head = await _exchange(reader, writer, _request_bytes(load, path))
                    latencies.append(time.perf_counter() - started)
                    if not response_head.startswith(b"HTTP/1.1 2"):
                        errors += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                errors += 1
            finally:
                writer.close()

        started = time.perf_counter()
        await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
        elapsed = time.perf_counter() - started
        if len(latencies) < 2:
            raise RuntimeError(
                f"{load.method} {load.base_url}{load.path}: fewer than 2 answers in {elapsed:.1f} s"
            )
        percentiles = statistics.quantiles(latencies, n=100, method="inclusive")
        return LoadResult(
            len(latencies), elapsed, percentiles[49] * 1000, percentiles[98] * 1000, errors
        )


async def request_each_key(load: Load) -> int:
    """`load`'s request once for every key index, over CONNECTIONS keep-alive connections;
    answers how many were not 2xx. httpx at 32 connections managed a few hundred a second."""
    url = urlsplit(load.base_url)
    prefix, suffix, keys = load.split_path()
    indexes = iter(range(keys))  # shared: each index goes to one connection
    failures = 0

    async def connection() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        try:
            for i in indexes:
                if not (
                    await _exchange(reader, writer, _request_bytes(load, f"{prefix}{i}{suffix}"))
                ).startswith(b"HTTP/1.1 2"):
                    failures += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return failures


def load_generator(preference: str, workdir: Path, cpus: int) -> LoadGenerator:
    """wrk when installed (or asked for), else the bench's own; "python" forces ours."""
    executable = shutil.which("wrk")
    if preference == "python" or (preference == "auto" and executable is None):
        return PythonLoad()
    if executable is None:
        raise RuntimeError("--load wrk: wrk is not installed (Debian package wrk)")
    return Wrk(executable, workdir / "bench.lua", threads=max(1, min(2, cpus)))
