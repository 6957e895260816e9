"""The `keychain` console script: serve, migrate, sweep, rotate-keys, stats, mint-token, purge,
and keys new / tokens new for the settings an operator writes."""

from __future__ import annotations

import argparse
import asyncio
import errno
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import (
    ConfigurationError,
    DatabaseNotMigrated,
    DatabaseUnavailable,
    ExecutionEnded,
    FeatureDisabled,
    InvalidEntry,
)
from app.logs import configure_logging
from app.settings import Settings, load_settings

if TYPE_CHECKING:  # the commands import the heavy parts only when they run
    from alembic.config import Config

    from app.db.engine import Database

# argparse itself exits 2 on bad usage.
EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_CANNOT_LISTEN = 0, 1, 3, 4

EPILOG = """\
Settings come from KEYCHAIN_* environment variables (KEYCHAIN_DATABASE_URL, KEYCHAIN_SCHEMA, ...).
Exit codes: 0 ok; 1 bad configuration or the command failed; 2 bad usage; 3 database unreachable;
4 (serve) the address cannot be listened on."""


def alembic_config(schema: str, url: str) -> Config:
    """Alembic's configuration, built here rather than read from alembic.ini: the migrations
    are package data (app/migrations, the checkout's alembic/ through a link), so `keychain
    migrate` works from any directory once the wheel is installed."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "app:migrations")
    config.attributes["keychain_schema"] = schema
    config.attributes["url"] = url
    return config


def migrate(settings: Settings) -> None:
    from alembic import command
    from app.db.engine import direct_database_url

    command.upgrade(alembic_config(settings.db_schema, direct_database_url(settings)), "head")


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    migrate(settings)
    return EXIT_OK


def _tls_files(settings: Settings) -> tuple[Path, Path] | None:
    """The certificate and key to serve https with, checked now so that a bad pair is one
    line at start rather than a traceback from uvicorn (or a passphrase prompt)."""
    import ssl

    cert, key = settings.tls_cert_file, settings.tls_key_file
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("CERT", "KEY") if key is None else ("KEY", "CERT")
        raise ConfigurationError(
            f"KEYCHAIN_TLS_{given}_FILE is set but KEYCHAIN_TLS_{missing}_FILE is not: https needs "
            "both (the certificate and its private key, PEM files), plain http neither"
        )
    for variable, path in (("KEYCHAIN_TLS_CERT_FILE", cert), ("KEYCHAIN_TLS_KEY_FILE", key)):
        try:
            path.open("rb").close()
        except OSError as exc:
            raise ConfigurationError(f"{variable}: cannot read {path}: {exc.strerror}") from None

    def no_passphrase() -> bytes:
        raise ConfigurationError(
            f"KEYCHAIN_TLS_KEY_FILE {key} is encrypted; give the key unencrypted"
        )

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        # OpenSSL's reason names the problem (KEY_VALUES_MISMATCH, ...) and never the key.
        raise ConfigurationError(
            f"KEYCHAIN_TLS_CERT_FILE {cert} and KEYCHAIN_TLS_KEY_FILE {key} are not a PEM "
            f"certificate and its private key ({exc.reason or 'not PEM'})"
        ) from None
    return cert, key


def serve(settings: Settings) -> int:
    import gc
    import logging

    import uvloop

    from app.asgi import create_app

    cert, key = _tls_files(settings) or (None, None)
    problem = _listen_problem(settings.host, settings.port)
    if problem is not None:
        return _fail(
            "serve",
            f"cannot listen on {settings.host}:{settings.port}: {problem}",
            EXIT_CANNOT_LISTEN,
        )
    app = create_app(settings)
    log = logging.getLogger(__name__)
    if cert:
        log.info("serving https on %s:%s (certificate %s)", settings.host, settings.port, cert)
    else:
        log.info(
            "serving plain http on %s:%s; set KEYCHAIN_TLS_CERT_FILE and KEYCHAIN_TLS_KEY_FILE for https",
            settings.host,
            settings.port,
        )
    # What imports and create_app() made lives as long as the process: keep it out of the
    # cyclic collector's full passes, each of which otherwise walked all of it (tens of ms, a
    # pause every request in flight waited out).
    gc.freeze()
    if not uvloop.run(_serve_with_granian(app, settings, cert, key)):
        return _fail(
            "serve",
            "the app failed to start or stopped unexpectedly; see the log above",
            EXIT_FAILED,
        )
    return EXIT_OK


def _listen_problem(host: str, port: int) -> str | None:
    """Why the address cannot be listened on, or None. granian binds with SO_REUSEPORT, so a
    second server on a port already served would quietly share it instead of failing."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            # Connections of a server that just stopped, still in TIME_WAIT, are no obstacle.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        hint = (
            " (another server is running there? set KEYCHAIN_PORT or --port)"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        return f"{exc.strerror or exc}{hint}"
    return None


async def _serve_with_granian(
    app: Any, settings: Settings, cert: Path | None, key: Path | None
) -> bool:
    """Serve until SIGTERM or SIGINT, then drain: answer what is in flight, run the app's
    shutdown (the last hit counts are written), return. False if the app failed instead.

    granian rather than uvicorn: its HTTP handling runs in Rust, off the Python thread, and a
    hit served 1.5x as fast (make bench). Its in-process server keeps one process, as
    uvicorn.run() did: the embedded PostgreSQL stops with it, and SIGKILL leaves nothing behind."""
    from granian.constants import Interfaces, SSLProtocols
    from granian.server.embed import Server

    server = Server(
        app,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        backlog=1024,
        ssl_cert=cert,
        ssl_key=key,
        ssl_protocol_min=SSLProtocols.tls12,
        log_enabled=False,  # its records go through the handlers configure_logging() set
    )
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, server.stop)
    await server.serve()
    return not server.interrupt_children


@asynccontextmanager
async def _opened_database(settings: Settings) -> AsyncIterator[Database]:
    """The database a command works on, disposed when the command ends."""
    from app.db.engine import Database, make_engine

    database = Database(make_engine(settings))
    try:
        yield database
    finally:
        await database.dispose()


async def _sweep(settings: Settings, args: argparse.Namespace) -> int:
    from app.keychain.sweeper import sweep_once

    async with _opened_database(settings) as database:
        result = await sweep_once(
            database,
            settings.sweep_batch_size,
            ended_retention_seconds=settings.execution_token_ttl_seconds,
        )
    if not result.swept:
        print("another replica holds the sweep lock; nothing done")
    else:
        print(f"swept {result.deleted} expired rows")
    return EXIT_OK


async def _rotate_keys(settings: Settings, args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from app.asgi import make_keyring
    from app.keychain.rotation import count_to_reseal, reseal_all

    keyring = make_keyring(settings)
    async with _opened_database(settings) as database:
        total = await count_to_reseal(database, keyring)
        with Progress(transient=False) as progress:
            task = progress.add_task(f"re-sealing under {keyring.primary_key_id!r}", total=total)
            result = await reseal_all(
                database,
                keyring,
                args.batch_size,
                on_batch=lambda done: progress.advance(task, done),
            )
        # Counted again rather than trusted: a replica still on the old key ring may have
        # sealed new rows with an old key while we ran.
        remaining = await count_to_reseal(database, keyring)
    print(f"re-sealed {result.resealed} rows under key {keyring.primary_key_id!r}")
    if remaining:
        print(
            f"{remaining} rows are still sealed by other keys ({result.unreadable} open with no"
            " configured key; see the log for their cache keys): keep the old keys, rerun",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


async def _stats(settings: Settings, args: argparse.Namespace) -> int:
    import msgspec

    from app.keychain.repository import KeychainRepository
    from app.keychain.stats import collect_stats

    async with _opened_database(settings) as database, database.transaction() as conn:
        report = await collect_stats(KeychainRepository(conn), args.top)
    if args.json:
        print(msgspec.json.encode(report).decode())
    else:
        _print_stats(report)
    return EXIT_OK


async def _mint_token(settings: Settings, args: argparse.Namespace) -> int:
    from app.asgi import make_execution_tokens
    from app.auth import Principal
    from app.keychain.repository import KeychainRepository
    from app.keychain.schemas import ExecutionTokenRequest
    from app.keychain.service import mint_execution_token

    signer = make_execution_tokens(settings)
    request = ExecutionTokenRequest(
        execution_id=args.execution_id,
        parent_execution_id=args.parent_execution_id,
        read=args.read,
        write=args.write,
        ttl_seconds=args.ttl,
    )
    async with _opened_database(settings) as database, database.transaction() as conn:
        minted = await mint_execution_token(
            KeychainRepository(conn), signer, Principal(name="cli", role="issuer"), request
        )
    # The token alone on stdout, for TOKEN=$(keychain mint-token ...); the rest for people.
    print(minted.token)
    print(
        f"execution {minted.execution_id}, expires {minted.expires_at.isoformat()}", file=sys.stderr
    )
    return EXIT_OK


async def _purge(settings: Settings, args: argparse.Namespace) -> int:
    from app.audit import audit_event
    from app.keychain.repository import KeychainRepository
    from app.keychain.service import purge_credentials

    credential_name, scope_type = args.name, args.scope
    async with _opened_database(settings) as database, database.transaction() as conn:
        # Announced in the same transaction, as the API does: every server drops them from memory.
        messages = await purge_credentials(
            KeychainRepository(conn), [credential_name], scope_type=scope_type
        )
    deleted = sum(len(message.keys) for message in messages)
    audit_event(
        "purgeCredential",
        "ok",
        actor="cli",
        role="admin",
        credential_name=credential_name,
        scope_type=scope_type,
        deleted=deleted,
    )
    where = f" in {scope_type} scope" if scope_type else ""
    print(f"purged {deleted} entries of {credential_name}{where}")
    return EXIT_OK


def _print_stats(report: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # A terminal gets tables at its width; a pipe gets every row on one line, whatever the
    # length of its cache key, so that grep and sort still work.
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=100_000)

    def table(headers: list[str], rows: list[list[Any]], numeric: set[str]) -> Table:
        shown = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for header in headers:
            shown.add_column(header, justify="right" if header in numeric else "left")
        for row in rows:
            shown.add_row(*(Text(str(value)) for value in row))  # keys are data, not markup
        return shown

    console.print(
        f"live entries: {report['live_entries']}"
        f"   expired, not yet swept: {report['expired_unswept']}"
        f"   hits: {report['hits']}",
        markup=False,
    )
    if groups := report["by_scope_and_cache_type"]:
        columns = ["scope_type", "cache_type", "live", "expired_unswept", "hits"]
        headers = ["scope", "cache_type", "live", "expired", "hits"]
        console.print()
        console.print(
            table(headers, [[g[c] for c in columns] for g in groups], {"live", "expired", "hits"})
        )
    if top := report["top_keys"]:
        rows = [
            [
                k["access_count"],
                k["scope_type"],
                k["cache_type"],
                "expired" if k["expired"] else "live",
                k["expires_at"].isoformat(timespec="seconds"),
                k["cache_key"],
            ]
            for k in top
        ]
        headers = ["hits", "scope", "cache_type", "state", "expires_at", "cache_key"]
        console.print()
        console.print(f"top {len(top)} keys by access count:", markup=False)
        console.print(table(headers, rows, {"hits"}))


def _top(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {value!r}") from None
    if not 0 <= number <= 1000:
        raise argparse.ArgumentTypeError("must be between 0 and 1000")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keychain",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('keychain')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, summary: str, description: str, under: Any = commands
    ) -> argparse.ArgumentParser:
        """A subcommand (of `under`: the top level's, or a command's own subcommands)."""
        parser: argparse.ArgumentParser = under.add_parser(
            name,
            help=summary,
            description=textwrap.fill(description, 88),
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return parser

    serve_cmd = command(
        "serve",
        "serve the HTTP API (granian)",
        "Serve the HTTP API, /metrics, /health and /ready with granian: one process (scale with "
        "replicas). It never migrates: run 'keychain migrate' first. With KEYCHAIN_TLS_CERT_FILE "
        "and KEYCHAIN_TLS_KEY_FILE (PEM) it serves https only.",
    )
    serve_cmd.add_argument("--host", help="listen address (KEYCHAIN_HOST, default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="listen port (KEYCHAIN_PORT, default 8082)")
    serve_cmd.set_defaults(func=_configured(lambda settings, _: serve(settings)))
    migrate_cmd = command(
        "migrate",
        "bring the schema up to date (alembic upgrade head)",
        "Create or upgrade the keychain table in KEYCHAIN_SCHEMA (alembic upgrade head). Safe to "
        "rerun, and to run from several pods at once (an advisory lock serialises them).",
    )
    migrate_cmd.set_defaults(func=_configured(_migrate))
    sweep_cmd = command(
        "sweep",
        "delete expired rows once, now",
        "Delete expired rows now, in batches of KEYCHAIN_SWEEP_BATCH_SIZE. The server already does "
        "this every KEYCHAIN_SWEEP_INTERVAL_SECONDS; only one replica sweeps at a time.",
    )
    sweep_cmd.set_defaults(func=_on_existing_database(_sweep))
    stats_cmd = command(
        "stats",
        "entries by scope and type, expired rows, hits, most-read keys",
        "Show live entries by scope and cache type, expired rows not yet swept, hits (reads since "
        "each entry was last written) and the most-read keys. Metadata only: never an entry's data.",
    )
    stats_cmd.add_argument("--json", action="store_true", help="print one JSON object, for scripts")
    stats_cmd.add_argument(
        "--top",
        type=_top,
        default=10,
        metavar="N",
        help="list the N most-read keys (10; 0 for none)",
    )
    stats_cmd.set_defaults(func=_on_existing_database(_stats))
    rotate_cmd = commands.add_parser(
        "rotate-keys",
        help="re-seal every row not sealed by the primary (first) key of KEYCHAIN_ENCRYPTION_KEYS",
        description="Re-seal rows under the primary key, in batches, each its own transaction; "
        "safe to interrupt and rerun. Once it reports 0 unreadable rows, older keys may be "
        "removed from KEYCHAIN_ENCRYPTION_KEYS.",
    )
    rotate_cmd.add_argument(
        "--batch-size", type=int, default=500, help="rows per transaction (500)"
    )
    rotate_cmd.set_defaults(func=_on_existing_database(_rotate_keys))
    mint_cmd = command(
        "mint-token",
        "print an execution token (as an issuer would get from POST /api/execution-tokens)",
        "Sign a token bound to one execution with KEYCHAIN_TOKEN_SIGNING_KEYS. It reaches that "
        "execution's and its sub-executions' entries, global entries only as --read/--write list "
        "(exact names, or prefixes ending in '*'), and stops working when it expires or the "
        "execution is cleaned up.",
    )
    mint_cmd.add_argument(
        "--execution-id", type=int, required=True, help="the execution it is bound to"
    )
    mint_cmd.add_argument("--parent-execution-id", type=int, help="its top-level execution, if any")
    mint_cmd.add_argument(
        "--read", action="append", default=[], metavar="CREDENTIAL", help="global reads (repeat)"
    )
    mint_cmd.add_argument(
        "--write",
        action="append",
        default=[],
        metavar="CREDENTIAL",
        help="global writes, reads too (repeat)",
    )
    mint_cmd.add_argument(
        "--ttl", type=int, metavar="SECONDS", help="lifetime (KEYCHAIN_EXECUTION_TOKEN_TTL_SECONDS)"
    )
    mint_cmd.set_defaults(func=_on_existing_database(_mint_token))
    purge_cmd = command(
        "purge",
        "drop every entry of a credential name, on every server",
        "Delete every entry whose credential_name is NAME (exactly): every execution, every scope "
        "or the one --scope names. Every server drops them from memory, as for the API's "
        "DELETE /api/credentials/auth-cache.",
    )
    purge_cmd.add_argument(
        "name", metavar="NAME", help="e.g. projects/123/secrets/openai-api-key/versions/1"
    )
    purge_cmd.add_argument(
        "--scope", choices=("execution", "global", "session"), help="only entries of this scope"
    )
    purge_cmd.set_defaults(func=_on_existing_database(_purge))

    keys_cmd = command(
        "keys",
        "make encryption keys",
        "Make entries for KEYCHAIN_ENCRYPTION_KEYS (and KEYCHAIN_TOKEN_SIGNING_KEYS, which take "
        "the same format; never use one key for both).",
    )
    keys_new = command(
        "new",
        "print a new key entry, id:<base64 of 32 random bytes>",
        "Print a new key entry, id:<base64 of 32 random bytes>, on stdout. To rotate, put it "
        "first in KEYCHAIN_ENCRYPTION_KEYS (new writes are sealed with it, the keys after it "
        "still open old rows), roll the servers, then run 'keychain rotate-keys'.",
        keys_cmd.add_subparsers(dest="keys_command", required=True, metavar="COMMAND"),
    )
    keys_new.add_argument(
        "id",
        nargs="?",
        type=_key_id,
        metavar="ID",
        help="the key id (default: k and the UTC date and time)",
    )
    keys_new.set_defaults(func=_keys_new)

    tokens_cmd = command(
        "tokens",
        "make API tokens",
        "Make API tokens and their entries for KEYCHAIN_API_TOKENS.",
    )
    tokens_new = command(
        "new",
        "print a new random token and its KEYCHAIN_API_TOKENS entry",
        "Print a new random token (line 1, for the caller: KEYCHAIN_API_TOKEN or "
        "'Authorization: Bearer <token>') and its entry for KEYCHAIN_API_TOKENS (line 2, "
        "NAME:ROLE:sha256:<hex>: the server holds only the token's digest). The token is "
        "shown once; nothing is stored.",
        tokens_cmd.add_subparsers(dest="tokens_command", required=True, metavar="COMMAND"),
    )
    tokens_new.add_argument(
        "name", type=_token_name, metavar="NAME", help="who uses it, e.g. ci-worker"
    )
    tokens_new.add_argument(
        "role", type=_role, metavar="ROLE", help="worker, issuer or admin (see the README's Roles)"
    )
    tokens_new.set_defaults(func=_tokens_new)
    return parser


def _key_id(value: str) -> str:
    from app.crypto import ENCRYPTION_KEYS_SETTING, check_key_id

    try:
        return check_key_id(value, ENCRYPTION_KEYS_SETTING)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _token_name(value: str) -> str:
    from app.auth import NAME_RULE, is_token_name

    if not is_token_name(value):
        raise argparse.ArgumentTypeError(f"{value!r} must be {NAME_RULE}")
    return value


def _role(value: str) -> str:
    from app.auth import ROLES

    if value not in ROLES:
        raise argparse.ArgumentTypeError(f"{value!r} must be one of {', '.join(ROLES)}")
    return value


def _keys_new(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from app.crypto import new_key_entry

    key_id = args.id or f"k{datetime.now(UTC):%Y%m%d%H%M%S}"
    print(new_key_entry(key_id))
    print(
        "put it first in KEYCHAIN_ENCRYPTION_KEYS (comma-separated, older keys after it), "
        "roll the servers, then run 'keychain rotate-keys'",
        file=sys.stderr,
    )
    return EXIT_OK


def _tokens_new(args: argparse.Namespace) -> int:
    from app.auth import digest_form, new_api_token

    token = new_api_token()
    # Each on a line of its own, for scripts: sed -n 1p / 2p.
    print(token)
    print(f"{args.name}:{args.role}:{digest_form(token)}")
    print(
        "line 1: the token, for the caller (KEYCHAIN_API_TOKEN); it is not shown again. line 2: "
        "its entry for KEYCHAIN_API_TOKENS (comma-separated with the others)",
        file=sys.stderr,
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (ConfigurationError, InvalidEntry, ExecutionEnded, FeatureDisabled) as exc:
        return _fail(args.command, str(exc), EXIT_FAILED)
    return code


def _configured(
    run: Callable[[Settings, argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """A command that runs on the settings (KEYCHAIN_*): loaded, checked and logging set up
    first; what the database answers becomes one line and an exit code."""

    def command(args: argparse.Namespace) -> int:
        overrides = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
        settings = load_settings(**overrides)
        _check_database_url(settings)
        configure_logging(settings)
        try:
            return run(settings, args)
        except Exception as exc:
            code = _database_failure(args.command, settings, exc)
            if code is None:
                raise  # not the database's answer: a bug (or a message for main()), keep it
            return code

    return command


def _on_existing_database(
    run: Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    """A command on data that already exists. With no KEYCHAIN_DATABASE_URL, it never starts an
    embedded PostgreSQL where there is none: that made a new, empty one, and the command then
    said the table was missing, which read as lost data."""

    def on_database(settings: Settings, args: argparse.Namespace) -> int:
        from app.db.engine import embedded_database_exists

        if settings.database_url is None and not embedded_database_exists(settings):
            raise ConfigurationError(
                f"no embedded database in the data directory {settings.data_dir.resolve()}: set "
                "KEYCHAIN_DATA_DIR to the server's data directory ('make run' keeps it in the "
                "checkout's .keychain), or KEYCHAIN_DATABASE_URL to its PostgreSQL"
            )
        return asyncio.run(run(settings, args))

    return _configured(on_database)


def _fail(command: str, message: str, code: int) -> int:
    print(f"keychain {command}: {message}", file=sys.stderr)
    return code


def _root_cause(exc: BaseException) -> str:
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:  # a cycle ends the walk
        exc = exc.__cause__
        seen.add(id(exc))
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _database_failure(command: str, settings: Settings, exc: Exception) -> int | None:
    """One line on stderr for what the database said; None for anything else."""
    from sqlalchemy.exc import DBAPIError

    from app.db.engine import outage

    where = _database_label(settings)
    meaning = (
        exc if isinstance(exc, DatabaseUnavailable) else outage(exc)
    )  # raised by a repository, or raw
    if isinstance(meaning, DatabaseNotMigrated):
        message = f"no keychain table in schema {settings.db_schema!r} at {where}; run 'keychain migrate' first"
        return _fail(command, message, EXIT_FAILED)
    if isinstance(meaning, DatabaseUnavailable):
        return _fail(
            command, f"cannot reach the database at {where}: {_root_cause(exc)}", EXIT_UNAVAILABLE
        )
    if isinstance(exc, DBAPIError):
        return _fail(command, f"the database at {where} answered: {_root_cause(exc)}", EXIT_FAILED)
    return None


def _database_label(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    if settings.database_url is None:
        return "the embedded PostgreSQL"
    return make_url(settings.database_url).render_as_string(hide_password=True)


def _check_database_url(settings: Settings) -> None:
    from sqlalchemy.exc import ArgumentError

    from app.db.engine import async_url

    if settings.database_url is None:
        return
    try:
        async_url(settings.database_url)
    except ArgumentError:
        # Not the parser's message: it quotes the whole URL, password included.
        raise ConfigurationError(
            "KEYCHAIN_DATABASE_URL is not a URL; expected postgresql://user:password@host:5432/dbname"
        ) from None
    except ValueError as exc:
        raise ConfigurationError(f"KEYCHAIN_DATABASE_URL: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
