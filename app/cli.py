"""The `keychain` console script: serve, migrate, sweep, rotate-keys, stats."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from app.errors import ConfigurationError, DatabaseUnavailable
from app.logs import configure_logging
from app.settings import Settings, load_settings

log = logging.getLogger("keychain.cli")

EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE = 0, 1, 3


def alembic_ini() -> Path:
    """alembic.ini sits beside app/ in a checkout and in the image's working directory."""
    for candidate in (Path(__file__).resolve().parent.parent / "alembic.ini", Path.cwd() / "alembic.ini"):
        if candidate.is_file():
            return candidate
    raise ConfigurationError("alembic.ini not found next to the app package or in the working directory")


def migrate(settings: Settings) -> None:
    from alembic import command
    from alembic.config import Config

    from app.db.engine import database_url

    config = Config(str(alembic_ini()))
    config.attributes["keychain_schema"] = settings.db_schema
    config.attributes["url"] = database_url(settings)
    command.upgrade(config, "head")


def serve(settings: Settings) -> None:
    import uvicorn

    from app.asgi import create_app

    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


async def _sweep(settings: Settings) -> int:
    from app.db.engine import Database, make_engine
    from app.db.tables import build_metadata
    from app.keychain.sweeper import sweep_once

    _, table = build_metadata(settings.db_schema)
    database = Database(make_engine(settings))
    try:
        result = await sweep_once(database, table, settings.sweep_batch_size)
    finally:
        await database.dispose()
    if not result.swept:
        print("another replica holds the sweep lock; nothing done")
    else:
        print(f"swept {result.deleted} expired rows")
    return EXIT_OK


async def _rotate_keys(settings: Settings, batch_size: int) -> int:
    from rich.progress import Progress

    from app.asgi import make_keyring
    from app.db.engine import Database, make_engine
    from app.db.tables import build_metadata
    from app.keychain.rotation import count_to_reseal, reseal_all

    keyring = make_keyring(settings)
    _, table = build_metadata(settings.db_schema)
    database = Database(make_engine(settings))
    try:
        total = await count_to_reseal(database, table, keyring)
        with Progress(transient=False) as progress:
            task = progress.add_task(f"re-sealing under {keyring.primary_key_id!r}", total=total)
            result = await reseal_all(
                database,
                table,
                keyring,
                batch_size,
                on_batch=lambda done: progress.advance(task, done),
            )
    finally:
        await database.dispose()
    print(f"re-sealed {result.resealed} rows under key {keyring.primary_key_id!r}")
    if result.unreadable:
        print(
            f"{result.unreadable} rows open with no configured key and were left as they were;"
            " see the log for their cache keys",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keychain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser("serve", help="serve the HTTP API (uvicorn)")
    serve_cmd.add_argument("--host", help="listen address (KEYCHAIN_HOST, default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="listen port (KEYCHAIN_PORT, default 8082)")
    commands.add_parser("migrate", help="bring the schema up to date (alembic upgrade head)")
    commands.add_parser("sweep", help="delete expired rows once, now")
    rotate_cmd = commands.add_parser(
        "rotate-keys",
        help="re-seal every row not sealed by the primary (first) key of KEYCHAIN_ENCRYPTION_KEYS",
        description="Re-seal rows under the primary key, in batches, each its own transaction; "
        "safe to interrupt and rerun. Once it reports 0 unreadable rows, older keys may be "
        "removed from KEYCHAIN_ENCRYPTION_KEYS.",
    )
    rotate_cmd.add_argument("--batch-size", type=int, default=500, help="rows per transaction (500)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
        settings = load_settings(**overrides)
        configure_logging(settings)
        if args.command == "serve":
            serve(settings)
        elif args.command == "migrate":
            migrate(settings)
        elif args.command == "sweep":
            return asyncio.run(_sweep(settings))
        elif args.command == "rotate-keys":
            return asyncio.run(_rotate_keys(settings, args.batch_size))
    except ConfigurationError as exc:
        print(f"keychain {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DatabaseUnavailable as exc:
        print(f"keychain {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
