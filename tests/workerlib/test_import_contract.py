"""The one rule, enforced: workerlib never imports app, SQLAlchemy, asyncpg or Alembic.

The contract lives in pyproject.toml ([tool.importlinter]); the second test proves it bites by
running the same contract over a copy of workerlib with one forbidden import added.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONTRACT = "workerlib must not import app, sqlalchemy, asyncpg, alembic"


def lint_imports(
    repo_root: Path, cwd: Path, pythonpath: list[Path]
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath)}
    # The console script's own entry point (`python -m importlinter.cli` runs nothing and exits 0).
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [
            sys.executable,
            "-c",
            command,
            "--config",
            str(repo_root / "pyproject.toml"),
            "--no-cache",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_workerlib_keeps_the_contract(repo_root: Path) -> None:
    result = lint_imports(repo_root, repo_root, [repo_root])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{CONTRACT} KEPT" in result.stdout


def test_the_contract_fails_a_workerlib_that_imports_the_server(
    repo_root: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "workerlib"
    shutil.copytree(repo_root / "workerlib", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "shortcut.py").write_text(
        "from app.keychain import repository  # straight to the database\n"
    )

    # The copy comes first on the path, so it is the `workerlib` the linter analyses.
    result = lint_imports(repo_root, tmp_path, [tmp_path, repo_root])
    assert result.returncode != 0
    assert f"{CONTRACT} BROKEN" in result.stdout
    assert "workerlib.shortcut -> app.keychain.repository" in result.stdout
