"""The README's worker script runs as written: against a real `keychain serve` and the Secret
Manager emulator, as a process of its own."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from tests.cluster import replicas
from tests.secret_manager_emulator import SecretManagerEmulator

REPO = Path(__file__).resolve().parents[2]


def worker_script() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## From a worker") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


async def test_the_readme_worker_script_runs_as_written(
    own_database: str, tmp_path: Path, secret_manager: SecretManagerEmulator
) -> None:
    secret_manager.add("projects/123/secrets/openai-api-key/versions/1", "sk-readme")
    script = tmp_path / "worker.py"
    script.write_text(worker_script())
    with replicas(own_database, tmp_path, 1) as (server,):
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYCHAIN_")}
        env.update(
            KEYCHAIN_SERVER_URL=server.url, SECRET_MANAGER_EMULATOR_HOST=secret_manager.address
        )
        worker = await asyncio.create_subprocess_exec(
            sys.executable, str(script), env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(worker.communicate(), 60)
    assert worker.returncode == 0, err.decode()[-2000:]
    assert secret_manager.calls["projects/123/secrets/openai-api-key/versions/1"] == 1
