"""Prometheus metrics: one registry per app, so every create_app() (and every test) counts alone.

Plain prometheus-client and plain ASGI, no Litestar: the service and the sweeper count through
KeychainMetrics, and they must stay free of the web framework.

The server runs one process per pod (scale with replicas), so the registry lives in memory
and no multiprocess mode is needed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from app.db.tables import SCOPE_TYPES
from app.response_status import StatusRecorder

__all__ = ["TEXT_FORMAT", "KeychainMetrics", "RequestMetricsMiddleware"]

# What render() produces: the classic text format every Prometheus version reads.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"

# A cache read answers in about a millisecond; the default buckets start at 5 ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class KeychainMetrics:
    """The counters the service, the sweeper and the HTTP layer move, and the scrape-time gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cache_hits = Counter(
            "keychain_cache_hits", "Reads that found a live entry", registry=r
        )
        self.cache_misses = Counter(
            "keychain_cache_misses", "Reads that found no live entry", ["reason"], registry=r
        )
        self.cache_writes = Counter(
            "keychain_cache_writes", "Entries written (upserts)", ["outcome"], registry=r
        )
        self.cache_deletes = Counter(
            "keychain_cache_deletes", "Entries invalidated one by one", registry=r
        )
        self.execution_cleanups = Counter(
            "keychain_execution_cleanups",
            "Execution cleanups (DELETE /api/executions/...)",
            registry=r,
        )
        self.execution_cleanup_rows = Counter(
            "keychain_execution_cleanup_rows", "Rows deleted by execution cleanups", registry=r
        )
        self.sweeps = Counter("keychain_sweeps", "Sweeper passes by result", ["result"], registry=r)
        self.swept_rows = Counter(
            "keychain_swept_rows", "Expired rows deleted by the sweeper", registry=r
        )
        self.fill_leases = Counter(
            "keychain_fill_leases",
            "Fill leases granted: one caller fetches for everyone a missing entry (fill) or a "
            "token's successor (refresh)",
            ["purpose"],
            registry=r,
        )
        self.fill_waits = Counter(
            "keychain_fill_waits",
            "Callers that waited for another's fill, by how the wait ended",
            ["outcome"],
            registry=r,
        )
        self.fill_seconds = Histogram(
            "keychain_fill_seconds",
            "From a fill lease's grant to the holder's write: the provider's fetch time, as the cache sees it",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.request_duration = Histogram(
            "keychain_request_duration_seconds",
            "HTTP request latency by method, route template and status",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.entries = Gauge(
            "keychain_entries",
            "Live (unexpired) entries by scope, counted at scrape time",
            ["scope_type"],
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "keychain_requests_in_flight",
            "HTTP requests being answered, at scrape time",
            registry=r,
        )
        # Moved by RequestMetricsMiddleware; shutdown waits for it to reach 0 (drained()).
        self.in_flight = 0
        self.database_up = Gauge(
            "keychain_database_up",
            "1 if this scrape could count entries in the database, else 0",
            registry=r,
        )
        self.invalidation_listener_up = Gauge(
            "keychain_invalidation_listener_up",
            "1 while this server's LISTEN connection for invalidations is connected, else 0"
            " (then the memory tier serves nothing and every read goes to the database)",
            registry=r,
        )
        # Every known label value exists from the start, so rate() sees a 0 before the first event.
        for reason in ("absent", "expired"):
            self.cache_misses.labels(reason)
        for outcome in ("created", "replaced"):
            self.cache_writes.labels(outcome)
        for result in ("swept", "skipped", "failed"):
            self.sweeps.labels(result)
        # filled: the entry came; took_over: the holder's lease ran out or was released, and
        # this caller got it; timed_out: its own wait ran out; busy: too many waiting already.
        for outcome in ("filled", "took_over", "timed_out", "busy"):
            self.fill_waits.labels(outcome)
        for purpose in ("fill", "refresh"):
            self.fill_leases.labels(purpose)

    # What the service and the sweeper call: a narrow interface, easy to read at the call site.
    def hit(self) -> None:
        self.cache_hits.inc()

    def miss(self, reason: str) -> None:
        self.cache_misses.labels(reason).inc()

    def write(self, *, created: bool) -> None:
        self.cache_writes.labels("created" if created else "replaced").inc()

    def delete(self) -> None:
        self.cache_deletes.inc()

    def execution_cleanup(self, rows: int) -> None:
        self.execution_cleanups.inc()
        self.execution_cleanup_rows.inc(rows)

    def fill_lease_granted(self, purpose: str) -> None:
        self.fill_leases.labels(purpose).inc()

    def fill_wait(self, outcome: str) -> None:
        self.fill_waits.labels(outcome).inc()

    def filled(self, seconds: float) -> None:
        self.fill_seconds.observe(seconds)

    def sweep(self, result: str) -> None:
        self.sweeps.labels(result).inc()

    def rows_swept(self, rows: int) -> None:
        self.swept_rows.inc(rows)

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight (the server stopped taking new ones), at most
        `timeout` seconds; whether it got there."""
        deadline = time.monotonic() + timeout
        # Polled, and only at shutdown: an Event would cost every request a check on its way out.
        while self.in_flight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return self.in_flight == 0

    def render(self, live_entries: Iterable[tuple[str, int]] | None, *, listening: bool) -> bytes:
        """The text exposition. `live_entries` is (scope_type, count) pairs, or None if the
        database could not be asked: then the entry gauges are dropped rather than left stale.
        `listening`: whether the invalidation listener is connected now."""
        self.entries.clear()
        self.requests_in_flight.set(self.in_flight)
        self.invalidation_listener_up.set(1 if listening else 0)
        if live_entries is None:
            self.database_up.set(0)
        else:
            self.database_up.set(1)
            counts = dict.fromkeys(SCOPE_TYPES, 0)
            for scope_type, count in live_entries:
                counts[scope_type] = counts.get(scope_type, 0) + count
            for scope_type, count in counts.items():
                self.entries.labels(scope_type).set(count)
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Time every routed HTTP request, labelled by the route TEMPLATE, never the concrete path:
    cache keys in a label would make the number of series unbounded."""

    def __init__(self, app: Any, metrics: KeychainMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        recorder = StatusRecorder(send)
        started = time.perf_counter()
        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, recorder)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.request_duration.labels(
                scope["method"], scope.get("path_template") or "unknown", str(recorder.status)
            ).observe(time.perf_counter() - started)
