"""Keychain's app served by uvicorn instead of granian, for the bench's side-by-side of the two.

`keychain serve` runs granian. This runs the same app, settings and logging (configure_logging
first, as `keychain serve` does, so the audit lines cost the same) under uvicorn with uvloop
and httptools, as `keychain serve` did before.

    python -m bench.uvicorn_server     (settings from KEYCHAIN_*, as `keychain serve`)
"""

from __future__ import annotations

import gc
import sys

import uvicorn

from tests.local_server import LocalKeychainServer


class UvicornKeychainServer(LocalKeychainServer):
    what = "keychain's app under uvicorn"

    def serve_command(self) -> list[str]:
        return [sys.executable, "-m", "bench.uvicorn_server"]


def main() -> None:
    from app.asgi import create_app
    from app.logs import configure_logging
    from app.settings import load_settings

    settings = load_settings()
    configure_logging(settings)
    app = create_app(settings)
    gc.freeze()  # as `keychain serve` does
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
