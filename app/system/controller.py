"""Liveness and readiness: /health does no I/O, so a database blip never restarts pods."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.datastructures import State

from app.errors import DatabaseUnavailable
from app.runtime import runtime_of


class SystemController(Controller):
    tags = ["system"]

    @get("/health", operation_id="health", summary="Liveness (no I/O)")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", operation_id="ready", summary="Readiness: the database answers (else 503)")
    async def ready(self, state: State) -> Response[dict[str, str]]:
        try:
            await runtime_of(state).database.ping()
        except DatabaseUnavailable as exc:
            return Response(
                {"status": "unavailable", "detail": str(exc)},
                status_code=503,
                headers={"Retry-After": "5"},
            )
        return Response({"status": "ready"})
