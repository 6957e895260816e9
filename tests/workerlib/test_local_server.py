"""tests/local_server.py, which the demo and the benchmark run: a real `keychain serve` on an
embedded PostgreSQL. Stopping it must leave no PostgreSQL running in its data directory."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.local_server import LocalKeychainServer

pytest.importorskip("pgserver")
psutil = pytest.importorskip("psutil")  # pgserver's own dependency


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """The postmaster started on `data_dir` (its command line names it) and its children."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(data_dir) in arg for arg in process.info["cmdline"] or []):
            found.append(process)
            found.extend(process.children(recursive=True))
    return found


def assert_all_gone(processes: list[psutil.Process], data_dir: Path) -> None:
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive, [p.info for p in alive]
    assert postgres_processes(data_dir) == []


def test_stop_exits_the_server_normally_and_postgres_stops_with_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with LocalKeychainServer(data_dir) as server:
        assert httpx.get(f"{server.url}/ready", timeout=5).status_code == 200
        running = postgres_processes(data_dir)
        assert running  # the check below would prove nothing if this found nothing
    assert server.returncode == 0  # SIGTERM became a normal exit; no kill was needed
    assert_all_gone(running, data_dir)


def test_a_server_killed_from_outside_does_not_leave_postgres_running(tmp_path: Path) -> None:
    """A killed server cannot stop its PostgreSQL (atexit never runs); stop() does it instead."""
    data_dir = tmp_path / "data"
    server = LocalKeychainServer(data_dir)
    server.start()
    try:
        running = postgres_processes(data_dir)
        assert running
        assert server._process is not None
        server._process.kill()
        server._process.wait(timeout=10)
        time.sleep(0.5)
        assert postgres_processes(data_dir)  # still there: this is what stop() must clean up
    finally:
        server.stop()
    assert server.exited_early is not None and server.exited_early < 0
    assert_all_gone(running, data_dir)
