"""TLS and mutual TLS: real handshakes on loopback with certificates made in the test."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ledgerflow.cli import main
from ledgerflow.client import Client, SyncClient
from ledgerflow.coordinator._server import TlsConfig
from ledgerflow.coordinator.api._auth import TokenTable
from ledgerflow.errors import CoordinatorUnavailableError
from ledgerflow.worker import Worker
from ledgerflow.workflow import Registry
from tests.security.conftest import StartCoordinator, Tokens
from tests.worker import workflows


@dataclass(frozen=True)
class Pki:
    """PEM material: a CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes
    other_ca: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    ip: str | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca_key, server_key, client_key, other_key = _key(), _key(), _key(), _key()
    ca = _cert("ledgerflow test CA", ca_key, None, ca_key, ca=True)
    other = _cert("some other CA", other_key, None, other_key, ca=True)
    return Pki(
        ca=_pem(ca),
        server_cert=_pem(_cert("coordinator", server_key, ca, ca_key, ip="127.0.0.1")),
        server_key=_pem_key(server_key),
        client_cert=_pem(_cert("worker-1", client_key, ca, ca_key)),
        client_key=_pem_key(client_key),
        other_ca=_pem(other),
    )


async def test_tls_with_a_token(
    pki: Pki, tokens: Tokens, start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    c = await start_coordinator(
        tls=TlsConfig(cert_chain=pki.server_cert, private_key=pki.server_key),
        auth_tokens=TokenTable.load(tokens.file),
    )
    address = f"127.0.0.1:{c.port}"
    trusted = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    async with await Client.connect(address, credentials=trusted, token=tokens.client) as client:
        await client.start("test.chain", 1, run_id="over-tls")
        assert (await client.get_run("over-tls")).run_id == "over-tls"
    # Plaintext to a TLS port, and TLS that does not trust the server's CA, both fail.
    with pytest.raises(CoordinatorUnavailableError):
        await Client.connect(address, token=tokens.client, connect_timeout=2)
    untrusted = grpc.ssl_channel_credentials(root_certificates=pki.other_ca)
    with pytest.raises(CoordinatorUnavailableError):
        await Client.connect(address, credentials=untrusted, connect_timeout=2)
    # The CLI trusts a CA file given with --tls-ca.
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.ca)
    cmd = ["run", "list", "--address", address, "--token", tokens.client, "--tls-ca", str(ca_file)]
    assert await asyncio.to_thread(main, cmd) == 0


async def test_mutual_tls(pki: Pki, start_coordinator: StartCoordinator) -> None:
    workflows.reset()
    c = await start_coordinator(
        tls=TlsConfig(cert_chain=pki.server_cert, private_key=pki.server_key, client_ca=pki.ca)
    )
    address = f"127.0.0.1:{c.port}"
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=pki.ca, private_key=pki.client_key, certificate_chain=pki.client_cert
    )
    without_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    with pytest.raises(CoordinatorUnavailableError):
        async with await Client.connect(address, credentials=without_cert) as client:
            await client.get_run("nope")
    worker = Worker(address, Registry.from_module(workflows), credentials=with_cert)
    runner = asyncio.create_task(worker.run())
    try:
        async with await Client.connect(address, credentials=with_cert) as client:
            handle = await client.start("test.chain", 2, run_id="mtls")
            assert await handle.result(timeout=30) == 1

        def sync_side() -> None:
            with SyncClient.connect(address, credentials=with_cert) as sync:
                assert sync.get_run("mtls").run_id == "mtls"

        await asyncio.to_thread(sync_side)
    finally:
        worker.stop()
        await runner
