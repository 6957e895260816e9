"""Keychain's app served by granian instead of uvicorn, for the bench's side-by-side of the two.

`keychain serve` runs uvicorn. This runs the same app, settings and logging (configure_logging
first, as `keychain serve` does, so the audit lines cost the same) under granian's ASGI server,
one worker, uvloop.
"""

from __future__ import annotations

import sys

from litestar import Litestar

from demo.local_server import LocalKeychainServer


def create_app() -> Litestar:
    """granian's --factory target: the app as `keychain serve` builds it, from KEYCHAIN_*."""
    from app.asgi import create_app as create_keychain_app
    from app.logs import configure_logging
    from app.settings import load_settings

    settings = load_settings()
    configure_logging(settings)
    return create_keychain_app(settings)


class GranianKeychainServer(LocalKeychainServer):
    what = "keychain's app under granian"

    def serve_command(self) -> list[str]:
        return [
            sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--workers", "1",
            "--host", "127.0.0.1", "--port", str(self.port), "--factory", "bench.granian_server:create_app",
        ]
