"""`keychain serve` over TLS, as a worker meets it: a real server process with a certificate
made here (a throwaway CA and a server certificate for 127.0.0.1 and localhost), a database
of its own, and clients that verify the way workers do."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.cli import EXIT_FAILED, migrate
from app.settings import load_settings
from tests.bodies import entry_body
from tests.conftest import TEST_KEY, TEST_KEY_ID, free_port

READY_TIMEOUT_S = 60.0
ENTRY = entry_body({"api_key": "sk-over-tls"}, execution_id=7)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@dataclass
class Certificates:
    ca: Path
    cert: Path
    key: Path
    encrypted_key: Path
    other_key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    directory = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Keychain test CA"))
        .issuer_name(_name("Keychain test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = Certificates(
        ca=directory / "ca.crt",
        cert=directory / "tls.crt",
        key=directory / "tls.key",
        encrypted_key=directory / "encrypted.key",
        other_key=directory / "other.key",
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(_key_pem(server_key))
    files.encrypted_key.write_bytes(_key_pem(server_key, password=b"not-a-real-passphrase"))
    files.other_key.write_bytes(_key_pem(ec.generate_private_key(ec.SECP256R1())))
    return files


def keychain_env(**settings: str) -> dict[str, str]:
    """This environment without inherited KEYCHAIN_* settings, plus the ones given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYCHAIN_")}
    return {**clean, **settings}


@dataclass
class TlsServer:
    port: int
    token: str
    log: Path

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _wait_ready(
    process: subprocess.Popen[bytes], server: TlsServer, verify: ssl.SSLContext
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"keychain serve exited with {process.returncode}:\n{server.log_tail()}"
            )
        try:
            if (
                httpx.get(f"{server.https_url}/ready", verify=verify, timeout=2.0).status_code
                == 200
            ):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"keychain serve was not ready over https:\n{server.log_tail()}")


def trusting(certificates: Certificates) -> ssl.SSLContext:
    """Verification as a worker given the CA file does it: the default checks, this CA."""
    return ssl.create_default_context(cafile=str(certificates.ca))


@pytest.fixture(scope="module")
def tls_server(
    make_empty_database, test_settings, certificates: Certificates, tmp_path_factory
) -> Iterator[TlsServer]:
    url = make_empty_database()
    migrate(load_settings({}, database_url=url, db_schema=test_settings.db_schema))
    server = TlsServer(
        port=free_port(),
        token=secrets.token_urlsafe(24),
        log=tmp_path_factory.mktemp("tls-server") / "server.log",
    )
    env = keychain_env(
        KEYCHAIN_DATABASE_URL=url,
        KEYCHAIN_ENCRYPTION_KEYS=f"{TEST_KEY_ID}:{TEST_KEY}",
        KEYCHAIN_API_TOKENS=f"tls-worker:worker:{server.token}",
        KEYCHAIN_HOST="127.0.0.1",
        KEYCHAIN_PORT=str(server.port),
        KEYCHAIN_SWEEP_INTERVAL_SECONDS="0",
        KEYCHAIN_TLS_CERT_FILE=str(certificates.cert),
        KEYCHAIN_TLS_KEY_FILE=str(certificates.key),
    )
    with server.log.open("wb") as log:
        # A file, not a pipe: nobody drains a pipe, and a full one would stall the server.
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(process, server, trusting(certificates))
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_a_client_trusting_the_ca_reads_and_writes_over_https(tls_server, certificates):
    with httpx.Client(
        base_url=tls_server.https_url,
        verify=trusting(certificates),
        headers={"Authorization": f"Bearer {tls_server.token}"},
    ) as client:
        assert client.get("/health").status_code == 200
        written = client.post("/api/auth-cache/tls-secret:7", json=ENTRY)
        assert written.status_code == 200, tls_server.log_tail()
        answer = client.get("/api/auth-cache/tls-secret:7")
    assert answer.status_code == 200, tls_server.log_tail()
    assert answer.json()["data"] == ENTRY["token_data"]


def test_the_server_says_it_serves_https(tls_server):
    assert f"serving https on 127.0.0.1:{tls_server.port}" in tls_server.log.read_text()


def test_default_verification_refuses_the_unknown_ca(tls_server):
    # Workers verify by default: a certificate from a CA they were not given is refused.
    with pytest.raises(httpx.ConnectError) as refused:
        httpx.get(f"{tls_server.https_url}/health", timeout=5)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


def test_plain_http_to_the_tls_port_gets_no_answer(tls_server):
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/health", timeout=5)


def serve_once(**settings: str) -> subprocess.CompletedProcess[str]:
    """`keychain serve` with a complete configuration but for the TLS settings given."""
    env = keychain_env(
        # Nothing listens there: a TLS mistake must stop the server before it connects.
        KEYCHAIN_DATABASE_URL=f"postgresql://keychain@127.0.0.1:{free_port()}/keychain",
        KEYCHAIN_ENCRYPTION_KEYS=f"{TEST_KEY_ID}:{TEST_KEY}",
        KEYCHAIN_API_TOKENS=f"tls-worker:worker:{secrets.token_urlsafe(24)}",
        KEYCHAIN_PORT=str(free_port()),
        **settings,
    )
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"cert": "cert"}, "KEYCHAIN_TLS_CERT_FILE is set but KEYCHAIN_TLS_KEY_FILE is not"),
        ({"key": "key"}, "KEYCHAIN_TLS_KEY_FILE is set but KEYCHAIN_TLS_CERT_FILE is not"),
        ({"cert": "cert", "key": "missing"}, "KEYCHAIN_TLS_KEY_FILE: cannot read "),
        ({"cert": "missing", "key": "key"}, "KEYCHAIN_TLS_CERT_FILE: cannot read "),
        (
            {"cert": "cert", "key": "other_key"},
            "are not a PEM certificate and its private key (KEY_VALUES_",
        ),
        ({"cert": "key", "key": "key"}, "are not a PEM certificate and its private key"),
        ({"cert": "cert", "key": "encrypted_key"}, "is encrypted; give the key unencrypted"),
    ],
)
def test_a_bad_tls_configuration_is_one_line_and_exit_code_1(
    certificates, tmp_path, files, message
):
    settings = {
        f"KEYCHAIN_TLS_{setting.upper()}_FILE": str(
            tmp_path / "absent.pem" if file == "missing" else getattr(certificates, file)
        )
        for setting, file in files.items()
    }
    done = serve_once(**settings)
    assert done.returncode == EXIT_FAILED
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("keychain serve: ") and message in done.stderr, done.stderr
    # Never the key itself.
    assert "PRIVATE KEY" not in done.stderr


def test_without_tls_settings_the_server_says_it_serves_plain_http(tmp_path):
    port = free_port()
    # Local mode on an embedded database would be slow to start; an unreachable one is enough
    # to see the start-up line before the first request needs it.
    env = keychain_env(
        KEYCHAIN_DATABASE_URL=f"postgresql://keychain@127.0.0.1:{free_port()}/keychain",
        KEYCHAIN_ENCRYPTION_KEYS=f"{TEST_KEY_ID}:{TEST_KEY}",
        KEYCHAIN_API_TOKENS=f"tls-worker:worker:{secrets.token_urlsafe(24)}",
        KEYCHAIN_HOST="127.0.0.1",
        KEYCHAIN_PORT=str(port),
        KEYCHAIN_SWEEP_INTERVAL_SECONDS="0",
    )
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail(f"keychain serve did not answer over http:\n{log.read_text()}")
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert f"serving plain http on 127.0.0.1:{port}" in log.read_text()


async def test_workerlib_reads_over_https_with_the_ca_it_is_given(tls_server, certificates):
    from workerlib import KeychainClient

    # As a worker pod is configured: the CA file in KEYCHAIN_CA_FILE, verify left alone.
    environ = {"KEYCHAIN_CA_FILE": str(certificates.ca)}
    async with KeychainClient(tls_server.https_url, tls_server.token, environ=environ) as client:
        data = {"api_key": "sk-from-a-worker"}
        await client.put("tls-worker-secret:8", data, credential_type="bearer", execution_id=8)
        entry = await client.get("tls-worker-secret:8")
    assert entry is not None and entry.data == data
    # Or given in code.
    verify = str(certificates.ca)
    async with KeychainClient(
        tls_server.https_url, tls_server.token, verify=verify, environ={}
    ) as client:
        assert (await client.get("tls-worker-secret:8")) is not None


async def test_workerlib_refuses_a_server_its_cas_do_not_vouch_for(tls_server, caplog):
    from workerlib import KeychainClient
    from workerlib.errors import KeychainUnavailable

    async with KeychainClient(
        tls_server.https_url, tls_server.token, environ={}, retries=2
    ) as client:
        with (
            caplog.at_level(logging.INFO, logger="workerlib"),
            pytest.raises(KeychainUnavailable) as refused,
        ):
            await client.get("tls-worker-secret:8")
    # The certificate, not the network: said so, with the setting to fix it, and not retried.
    assert "did not verify; trust its CA with KEYCHAIN_CA_FILE" in str(refused.value)
    assert not [r for r in caplog.records if r.getMessage() == "keychain request retried"]
    assert isinstance(refused.value.__cause__, httpx.ConnectError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value.__cause__)
