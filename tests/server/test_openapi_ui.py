"""The Swagger UI renders from assets the app serves itself (clusters often have no internet)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_KEY, TEST_KEY_ID, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


async def test_the_ui_page_refers_only_to_local_assets(client):
    page = (await client.get("/schema")).text
    assert "/static/swagger-ui/swagger-ui-bundle.js" in page
    assert "http://" not in page.split("<body>")[0] and "https://" not in page.split("<body>")[0]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
        assert (await client.get(f"/static/swagger-ui/{asset}")).status_code == 200


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """`keychain serve` on a free port; the UI needs no database, so none is reachable."""
    port = free_port()
    env = {
        **os.environ,
        "KEYCHAIN_PORT": str(port),
        "KEYCHAIN_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/none",
        "KEYCHAIN_ENCRYPTION_KEYS": f"{TEST_KEY_ID}:{TEST_KEY}",
        "KEYCHAIN_SWEEP_INTERVAL_SECONDS": "0",
        "KEYCHAIN_ALLOW_OPEN_API": "true",
        "KEYCHAIN_DATA_DIR": str(tmp_path),
    }
    keychain = Path(sys.executable).with_name("keychain")
    server = subprocess.Popen([str(keychain), "serve"], env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("keychain serve did not answer /health within 10 s")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


def _rendered_dom(url: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=20000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.mark.browser
@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian package `chromium`)"
)
def test_swagger_ui_renders_the_auth_cache_operations_in_chromium(served):
    # One retry: on a loaded 2-core machine Chromium has been seen to dump before running
    # the page's scripts. A real breakage (a missing asset) fails both attempts.
    for _ in range(2):
        chromium = _rendered_dom(f"{served}/schema")
        assert chromium.returncode == 0, chromium.stderr[-2000:]
        dom = chromium.stdout
        if 'class="swagger-ui' in dom:
            break
    # Swagger UI builds these nodes in JavaScript: present only if the bundle loaded and ran.
    assert 'class="swagger-ui' in dom, chromium.stderr[-2000:]
    for summary in (
        "Read an entry (counts a hit)",
        "Create or replace an entry",
        "Invalidate an entry",
    ):
        assert summary in dom
    assert "/api/auth-cache/{cache_key}" in dom
    assert "Authorize" in dom
