"""Liveness, readiness and metrics: /health does no I/O, so a database blip never restarts pods."""

from __future__ import annotations

import logging

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from app.errors import RETRY_AFTER_SECONDS, DatabaseUnavailable
from app.metrics import TEXT_FORMAT
from app.runtime import runtime_of

log = logging.getLogger(__name__)


class SystemController(Controller):
    tags = ["system"]

    @get("/health", operation_id="health", summary="Liveness (no I/O)")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @get(
        "/ready",
        operation_id="ready",
        summary="Readiness: the database answers (else 503)",
        responses={
            503: ResponseSpec(
                dict[str, str],
                description="The database is unreachable; retry after Retry-After seconds",
                generate_examples=False,
            )
        },
    )
    async def ready(self, state: State) -> Response[dict[str, str]]:
        runtime = runtime_of(state)
        try:
            async with runtime.db.transaction() as conn:
                await runtime.keychain_service(conn).check_ready()
        except DatabaseUnavailable as exc:
            return Response(
                {"status": "unavailable", "detail": str(exc)},
                status_code=503,
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
        return Response({"status": "ready"})

    @get("/metrics", operation_id="metrics", include_in_schema=False)
    async def metrics(self, state: State) -> Response[bytes]:
        """Prometheus text format, open like /health. Entries are counted now, in their own
        short transaction; with the database down the other metrics are still served."""
        runtime = runtime_of(state)
        live = None
        try:
            async with runtime.db.transaction() as conn:
                live = await runtime.keychain_service(conn).live_entries_by_scope()
        except DatabaseUnavailable as exc:
            log.warning("metrics: entries not counted: %s", exc)
        # The lifespan hands its one listener to ended_executions always (to the tier only
        # when the tier is on), and takes it back at shutdown.
        listener = runtime.process.ended_executions.listener
        listening = listener is not None and listener.connected
        # Set as a header: as media_type, Litestar would append a second charset.
        return Response(
            runtime.metrics.render(live, listening=listening), headers={"content-type": TEXT_FORMAT}
        )
