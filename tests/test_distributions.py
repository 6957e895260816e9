"""The two distributions as a worker image and a server image install them: each built wheel
(through its sdist, as a release would) alone in a fresh virtualenv, run from outside the
checkout, against real servers and a real database."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import tomllib
import venv
from collections.abc import Callable
from itertools import chain
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

from tests.conftest import TEST_KEY, TEST_KEY_ID
from tests.local_server import LocalKeychainServer

REPO = Path(__file__).resolve().parent.parent
# What a worker must never carry: the server and what only the server needs.
SERVER_PACKAGES = {
    "keychain",
    "litestar",
    "sqlalchemy",
    "asyncpg",
    "alembic",
    "granian",
    "uvicorn",
    "cryptography",
    "prometheus-client",
    "rich",
    "pyjwt",
}

# Run by the worker venv's own python, isolated (-I: neither the checkout nor PYTHONPATH).
WORKER = """
import asyncio, json, sys
import workerlib
from workerlib import KeychainClient

DATA = {"value": "from-the-wheel"}

async def main():
    async with KeychainClient(sys.argv[1], sys.argv[2]) as client:
        await client.put("dist-check:global", DATA, credential_type="bearer", scope_type="global")
        entry = await client.get("dist-check:global")
    print(json.dumps({"module": workerlib.__file__, "round_trip": entry.data == DATA}))

asyncio.run(main())
"""


def _run(*command: str | Path, **options: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=600, **options
    )
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both wheels, built once per session."""
    out = tmp_path_factory.mktemp("dist")
    for project in (REPO, REPO / "workerlib"):
        _run(sys.executable, "-m", "build", "--outdir", out, project)
    return out


def _wheel(wheels: Path, name: str) -> Path:
    (found,) = wheels.glob(f"{name}-*.whl")
    return found


def _fresh_venv(path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """A virtualenv without even pip, and the pip of this one to install into it, so that what
    `pip list` shows is exactly what the installs brought."""
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    return lambda *args: _run(sys.executable, "-m", "pip", "--python", python, *args)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed(pip: Callable[..., subprocess.CompletedProcess[str]]) -> set[str]:
    return {_normal(p["name"]) for p in json.loads(pip("list", "--format=json").stdout)}


@pytest.mark.parametrize(
    ("lock", "projects", "extras"),
    [("server.txt", [REPO], False), ("dev.txt", [REPO, REPO / "workerlib"], True)],
)
def test_each_lock_pins_every_requirement_within_its_range(lock, projects, extras):
    """A dependency changed in a pyproject.toml without `make lock` fails here, not later in
    a hash-checked install or the image build."""
    text = (REPO / "requirements" / lock).read_text()
    pins = {_normal(n): v for n, v in re.findall(r"^([A-Za-z0-9][\w.-]*)==([^\s;]+)", text, re.M)}
    stale = []
    for project in projects:
        metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
        groups = metadata.get("optional-dependencies", {}).values() if extras else []
        for requirement in map(Requirement, [*metadata["dependencies"], *chain(*groups)]):
            pinned = pins.get(_normal(requirement.name))
            if pinned is None or not requirement.specifier.contains(pinned, prereleases=True):
                stale.append(f"{requirement} (locked: {pinned})")
    assert not stale, f"requirements/{lock} is stale, run `make lock`: {stale}"


def test_workerlib_installs_alone_and_talks_to_a_server(wheels, tmp_path, own_database):
    pip = _fresh_venv(tmp_path / "worker")
    pip("install", "--quiet", _wheel(wheels, "keychain_workerlib"))
    installed = _installed(pip)
    assert {"keychain-workerlib", "httpx", "msgspec"} <= installed
    assert not installed & SERVER_PACKAGES

    token = secrets.token_urlsafe(24)
    with LocalKeychainServer(
        tmp_path / "server",
        api_tokens=f"dist-check:worker:{token}",
        database_url=own_database,
        encryption_keys=f"{TEST_KEY_ID}:{TEST_KEY}",
    ) as server:
        (tmp_path / "worker.py").write_text(WORKER)
        python = tmp_path / "worker" / "bin" / "python"
        done = _run(python, "-I", "worker.py", server.url, token, cwd=tmp_path)
    answer = json.loads(done.stdout)
    assert answer["round_trip"] is True
    assert Path(answer["module"]).is_relative_to(tmp_path / "worker")
    # Typed for the worker's own type checker (PEP 561).
    assert (Path(answer["module"]).parent / "py.typed").is_file()


def test_the_server_wheel_migrates_and_serves_from_any_directory(
    wheels, tmp_path, make_empty_database, monkeypatch
):
    """As the image installs it: the server lock (hash-checked), then the wheel alone."""
    pip = _fresh_venv(tmp_path / "server-venv")
    pip("install", "--quiet", "--require-hashes", "-r", REPO / "requirements" / "server.txt")
    pip("install", "--quiet", "--no-deps", _wheel(wheels, "keychain"))
    pip("check")
    assert "keychain-workerlib" not in _installed(pip)

    # Nowhere near alembic.ini or alembic/: the migrations come from the wheel.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with LocalKeychainServer(
        tmp_path / "server",
        keychain=[str(tmp_path / "server-venv" / "bin" / "keychain")],
        database_url=make_empty_database(),
        encryption_keys=f"{TEST_KEY_ID}:{TEST_KEY}",
        allow_open_api="true",
    ) as server:  # runs `keychain migrate`, then `keychain serve` on a free port
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        # The migrated table takes a write and gives it back.
        entry = f"{server.url}/api/auth-cache/dist-check:global"
        body = {"token_data": {"value": "v"}, "credential_type": "bearer", "scope_type": "global"}
        assert httpx.post(entry, json=body).status_code == 200
        assert httpx.get(entry).json()["data"] == {"value": "v"}
