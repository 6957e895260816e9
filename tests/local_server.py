"""Run a real Keychain server for the demo and the benchmark: `keychain migrate`, then
`keychain serve` on 127.0.0.1 and a free port, on the embedded PostgreSQL in a data directory
of our own. Inherited KEYCHAIN_* variables are dropped so a run never touches a real database.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx

READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def keychain_command() -> list[str]:
    """The `keychain` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("keychain")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


class LocalKeychainServer:
    # Who is starting, in the messages; the bench's floor app runs as one of these too.
    what = "keychain serve"

    def __init__(
        self,
        data_dir: Path,
        *,
        api_tokens: str = "",
        log_level: str = "INFO",
        keychain: list[str] | None = None,
        **settings: str,
    ) -> None:
        """`settings` are more KEYCHAIN_* settings by field name (audit_reads="false");
        `keychain` is the command to run (default: this interpreter's, keychain_command()).

        Servers given one data directory share its embedded PostgreSQL."""
        self.data_dir = data_dir
        self.keychain = keychain or keychain_command()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KEYCHAIN_")}
        self.env.update(
            KEYCHAIN_DATA_DIR=str(data_dir),
            KEYCHAIN_HOST="127.0.0.1",
            KEYCHAIN_PORT=str(self.port),
            KEYCHAIN_API_TOKENS=api_tokens,
            KEYCHAIN_LOG_LEVEL=log_level,
            **{f"KEYCHAIN_{name.upper()}": value for name, value in settings.items()},
        )
        self.commands: list[str] = []
        self._process: subprocess.Popen[bytes] | None = None
        # Set when the server had already exited (say, killed from outside) before stop().
        self.exited_early: int | None = None
        # The server's exit status once stop() has run: 0 after a normal stop.
        self.returncode: int | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            migrate = [*self.keychain, "migrate"]
            self.commands.append(" ".join(migrate))
            done = subprocess.run(
                migrate, env=self.env, stdout=log, stderr=subprocess.STDOUT, timeout=300
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"keychain migrate failed (exit {done.returncode}):\n{self.log_tail()}"
                )
            serve = self.serve_command()
            self.commands.append(f"KEYCHAIN_PORT={self.port} " + " ".join(serve))
            # A file, not a pipe: nobody drains a pipe, and a full one would stall the server.
            self._process = subprocess.Popen(
                serve, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_ready()

    def serve_command(self) -> list[str]:
        return [*self.keychain, "serve"]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"{self.what} exited with {self._process.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(
            f"{self.what} was not ready after {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is not None:
            self.exited_early = process.returncode
        else:
            # The standard stop signal: `keychain serve` turns SIGTERM into a normal exit, so its
            # atexit hooks run and pgserver stops the embedded PostgreSQL.
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.returncode = process.returncode
        self._stop_leftover_postgres()

    def _stop_leftover_postgres(self) -> None:
        """Stop the embedded PostgreSQL if the server could not (fast shutdown).

        PostgreSQL runs detached from the server, which stops it on a normal exit. A server
        that was killed (by us after the timeout above, or by anyone with SIGKILL or the OOM
        killer) never does, and the postmaster would keep running in its data directory.
        """
        pidfile = self.data_dir / "postgres" / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            tail = "(no server log)"
        if self.exited_early is not None:
            tail += f"\n(the server process had exited on its own, status {self.exited_early})"
        return tail

    def __enter__(self) -> LocalKeychainServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_with_temporary_server(
    purpose: str, role: str, run: Callable[[LocalKeychainServer, str], None]
) -> int:
    """`run(server, token)` against a throwaway server whose data directory is removed after;
    0 when it returns, 1 (with the server log's tail) when it raises. The demo and the
    benchmark both run this way."""
    with tempfile.TemporaryDirectory(
        prefix=f"keychain-{purpose}-", ignore_cleanup_errors=True
    ) as workdir:
        token = secrets.token_urlsafe(24)
        server = LocalKeychainServer(Path(workdir) / "data", api_tokens=f"{purpose}:{role}:{token}")
        try:
            run(server, token)
        except Exception as exc:
            print(f"{purpose} failed: {exc!r}", file=sys.stderr)
            print(f"server log ({server.log_path}):\n{server.log_tail()}", file=sys.stderr)
            return 1
    return 0
