"""A local Google Secret Manager for tests and the demo: a real gRPC server, the real protocol.

Only AccessSecretVersion is served (it is all workerlib uses), with the request and response
messages of google-cloud-secret-manager itself, so the real client talks to it unchanged when
SECRET_MANAGER_EMULATOR_HOST points here. As the service does, `.../versions/latest` is the
most recently created (highest) version and the response names the version served, a disabled
version answers FAILED_PRECONDITION (`latest` too when it is the disabled one: the service does
not fall back to an older version), and unknown names answer NOT_FOUND.

    python -m tests.secret_manager_emulator --secret projects/1/secrets/x/versions/1=hello
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import re
from types import TracebackType

import grpc
from google.cloud.secretmanager_v1 import (
    AccessSecretVersionRequest,
    AccessSecretVersionResponse,
    SecretPayload,
)

SERVICE = "google.cloud.secretmanager.v1.SecretManagerService"
_NUMBERED = re.compile(r"(?P<secret>.+)/versions/(?P<number>[0-9]+)")

log = logging.getLogger(__name__)


class SecretManagerEmulator:
    """Serves `secrets` (version name -> value) after `latency` seconds; counts every call
    under the name asked for."""

    def __init__(
        self,
        secrets: dict[str, str | bytes] | None = None,
        *,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.secrets: dict[str, bytes] = {}
        self.disabled: set[str] = set()
        for name, value in (secrets or {}).items():
            self.add(name, value)
        self.latency = latency
        self._bind = f"{host}:{port}"
        self._host = host
        self.port: int | None = None
        self.calls: collections.Counter[str] = collections.Counter()
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        """host:port, the value for SECRET_MANAGER_EMULATOR_HOST."""
        if self.port is None:
            raise RuntimeError("the emulator is not started")
        return f"{self._host}:{self.port}"

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def add(self, name: str, value: str | bytes) -> None:
        self.secrets[name] = value.encode() if isinstance(value, str) else value

    def disable(self, name: str) -> None:
        self.disabled.add(name)

    def clear(self) -> None:
        """No secrets, no versions disabled."""
        self.secrets.clear()
        self.disabled.clear()

    def reset_calls(self) -> None:
        self.calls.clear()

    def _resolve(self, name: str) -> str:
        """The version `name` names: `latest` is the highest version of its secret, enabled or not."""
        secret, _, version = name.rpartition("/versions/")
        if version != "latest":
            return name
        versions = [
            (int(match["number"]), held)
            for held in self.secrets
            if (match := _NUMBERED.fullmatch(held)) is not None and match["secret"] == secret
        ]
        return max(versions)[1] if versions else name

    async def _access(
        self, request: AccessSecretVersionRequest, context: grpc.aio.ServicerContext
    ) -> AccessSecretVersionResponse:
        self.calls[request.name] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        name = self._resolve(request.name)
        value = self.secrets.get(name)
        if value is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Secret Version [{request.name}] not found."
            )
        if name in self.disabled:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Secret Version [{name}] is in DISABLED state.",
            )
        return AccessSecretVersionResponse(name=name, payload=SecretPayload(data=value))

    async def start(self) -> str:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "AccessSecretVersion": grpc.unary_unary_rpc_method_handler(
                    self._access,
                    request_deserializer=AccessSecretVersionRequest.deserialize,
                    response_serializer=AccessSecretVersionResponse.serialize,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        self.port = server.add_insecure_port(self._bind)
        if not self.port:
            raise RuntimeError(f"could not bind the Secret Manager emulator to {self._bind}")
        await server.start()
        self._server = server
        log.info("Secret Manager emulator listening on %s", self.address)
        return self.address

    async def stop(self, grace: float | None = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def __aenter__(self) -> SecretManagerEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _serve(args: argparse.Namespace) -> None:
    secrets = dict(item.split("=", 1) for item in args.secret)
    emulator = SecretManagerEmulator(secrets, latency=args.latency, port=args.port)
    async with emulator:
        print(f"SECRET_MANAGER_EMULATOR_HOST={emulator.address}", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)"
    )
    parser.add_argument("--latency", type=float, default=0.25, help="seconds before each answer")
    parser.add_argument("--secret", action="append", default=[], metavar="NAME=VALUE")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
