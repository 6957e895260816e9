"""Fixtures for the Helm chart tests: find (or fetch) helm, render the chart.

These tests need only pytest, PyYAML and kubernetes-validate, plus a helm
binary: <venv>/bin/helm (put there by `make test` through
scripts/install_helm.py) or one on PATH. Where helm cannot be installed the
tests skip with the installer's reason, recorded once in
<venv>/bin/.helm-unavailable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "keychain"
INSTALLER = ROOT / "scripts" / "install_helm.py"
RELEASE = "kc"
NAMESPACE = "keychain"
HELM_TIMEOUT_SECONDS = 60
# Written by scripts/install_helm.py when it cannot install helm.
UNAVAILABLE_STAMP = ".helm-unavailable"
# The installer bounds each download itself; this only guards against a hang.
INSTALLER_TIMEOUT_SECONDS = 420


@dataclass
class HelmResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def documents(self) -> list[dict]:
        return [doc for doc in yaml.safe_load_all(self.stdout) if doc]


class Helm:
    def __init__(self, binary: Path, home: Path):
        self.binary = binary
        # Keep helm's config/cache/data out of the real $HOME.
        self.env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        self.values_dir = home / "values"
        self.values_dir.mkdir(parents=True, exist_ok=True)
        self._files = 0

    def run(self, *args: str) -> HelmResult:
        result = subprocess.run(
            [str(self.binary), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=HELM_TIMEOUT_SECONDS,
            env=self.env,
        )
        return HelmResult(result.returncode, result.stdout, result.stderr)

    def values_file(self, values: dict) -> Path:
        # JSON is YAML, and exact: no --set escaping of commas and colons.
        self._files += 1
        path = self.values_dir / f"values-{self._files}.json"
        path.write_text(json.dumps(values))
        return path

    def value_args(self, values: list[dict | Path]) -> list[str]:
        args = []
        for item in values:
            args += ["-f", str(item if isinstance(item, Path) else self.values_file(item))]
        return args

    def template(self, *values: dict | Path) -> HelmResult:
        return self.run(
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            *self.value_args(list(values)),
        )

    def notes(self, *values: dict | Path) -> HelmResult:
        """NOTES.txt as an install would print it (client-side dry run: no cluster needed)."""
        return self.run(
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
            *self.value_args(list(values)),
        )

    def render(self, *values: dict | Path) -> list[dict]:
        """Render and parse, failing the test with helm's message when rendering fails."""
        result = self.template(*values)
        assert result.returncode == 0, result.output
        return result.documents()


def _find_or_install_helm(bin_dir: Path) -> tuple[Path | None, str]:
    """helm in bin_dir or on PATH; else the reason it is unavailable.

    The installer is tried at most once per bin_dir: on failure it leaves the
    reason in bin_dir/.helm-unavailable (as `make test` does), and later runs
    skip with that reason instead of downloading again.
    """
    for candidate in (bin_dir / "helm", shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate), ""
    stamp = bin_dir / UNAVAILABLE_STAMP
    if stamp.is_file():
        return None, " ".join(stamp.read_text().split()) or "no reason recorded"
    # Not tried yet (pytest run without `make test`): try once.
    try:
        result = subprocess.run(
            [sys.executable, str(INSTALLER), str(bin_dir)],
            check=False,
            capture_output=True,
            text=True,
            timeout=INSTALLER_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        reason = f"scripts/install_helm.py did not finish in {INSTALLER_TIMEOUT_SECONDS}s"
        bin_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(reason + "\n")
        return None, reason
    if result.returncode == 0 and (bin_dir / "helm").is_file():
        return bin_dir / "helm", ""
    return None, " ".join((result.stderr or result.stdout).split())


def _helm_bin_dir(tmp_dir: Path) -> Path:
    # In a venv, the venv's bin (where `make test` puts helm), so one try serves
    # every later run; outside one, a temporary directory rather than /usr/bin.
    return Path(sys.prefix) / "bin" if sys.prefix != sys.base_prefix else tmp_dir


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    home = tmp_path_factory.mktemp("helm")
    bin_dir = _helm_bin_dir(home / "bin")
    binary, failure = _find_or_install_helm(bin_dir)
    if binary is None:
        pytest.skip(
            f"helm unavailable: {failure} (to try again: rm {bin_dir / UNAVAILABLE_STAMP}"
            f" .venv/.helm-checked; make test)"
        )
    return Helm(binary, home)
