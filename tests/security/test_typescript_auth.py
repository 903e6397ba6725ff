"""The TypeScript SDK against a coordinator that requires tokens, over TLS and mutual TLS.

A real coordinator on loopback (the ``start_coordinator`` fixture) with a token file and
the certificates of ``test_tls.pki``; the TypeScript side is the real SDK, run by Node with
tsx as ``tests/e2e/test_polyglot.py`` runs it: ``sdk/typescript/e2e/step-worker.ts`` serves
the kind ``images`` for the Python workflow ``polyglot`` (``tests/e2e/e2e_app.py``), and
``sdk/typescript/e2e/watch-run.ts`` starts a run and watches it to the end. Both read
their connection from the environment as the Python CLI does (``LEDGERFLOW_ADDRESS``,
``LEDGERFLOW_TOKEN``, ``LEDGERFLOW_TLS_CA``; a client certificate from
``LEDGERFLOW_E2E_TLS_CERT`` / ``LEDGERFLOW_E2E_TLS_KEY``) and end a failure with one
``{"error": {"name", "code", "message"}}`` line and exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from ledgerflow.client import Client
from ledgerflow.coordinator._server import Coordinator, TlsConfig
from ledgerflow.coordinator.api._auth import TokenTable
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.worker import Worker
from tests.e2e.e2e_app import polyglot
from tests.e2e.test_workflows import REPO_ROOT_TS
from tests.security import test_tls
from tests.security.conftest import StartCoordinator, Tokens
from tests.security.test_tls import Pki

# The TLS tests' certificates (a module-scoped fixture): pytest finds fixtures by the names
# a test module binds them to.
pki = test_tls.pki

NODE = shutil.which("node") or "node"
# Settings of the runner's own environment that would change what the scripts connect with.
_CONNECTION_ENV = (
    "LEDGERFLOW_ADDRESS",
    "LEDGERFLOW_TOKEN",
    "LEDGERFLOW_TLS_CA",
    "LEDGERFLOW_E2E_TLS_CERT",
    "LEDGERFLOW_E2E_TLS_KEY",
    "NODE_EXTRA_CA_CERTS",
)
# Bounds a hung script, so a failure is a failed test rather than a stuck suite.
_SCRIPT_TIMEOUT = 120


@dataclass(frozen=True)
class PemFiles:
    """The PEM material of ``Pki`` on disk, where the scripts read it."""

    ca: Path
    other_ca: Path
    client_cert: Path
    client_key: Path


@pytest.fixture
def pem_files(pki: Pki, tmp_path: Path) -> PemFiles:
    files = PemFiles(
        ca=tmp_path / "ca.pem",
        other_ca=tmp_path / "other-ca.pem",
        client_cert=tmp_path / "client.pem",
        client_key=tmp_path / "client.key",
    )
    files.ca.write_bytes(pki.ca)
    files.other_ca.write_bytes(pki.other_ca)
    files.client_cert.write_bytes(pki.client_cert)
    files.client_key.write_bytes(pki.client_key)
    return files


def ts_env(
    address: str,
    *,
    token: str | None = None,
    ca: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment a script runs with: the runner's, with only the given connection."""
    env = {k: v for k, v in os.environ.items() if k not in _CONNECTION_ENV}
    env["LEDGERFLOW_ADDRESS"] = address
    if token is not None:
        env["LEDGERFLOW_TOKEN"] = token
    if ca is not None:
        env["LEDGERFLOW_TLS_CA"] = str(ca)
    if client_cert is not None:
        env["LEDGERFLOW_E2E_TLS_CERT"], env["LEDGERFLOW_E2E_TLS_KEY"] = map(str, client_cert)
    return {**env, **extra}


@dataclass(frozen=True)
class Finished:
    """A script that ran to its end."""

    returncode: int
    lines: list[dict[str, Any]]
    """Its stdout, one JSON object a line."""
    output: str
    """Its stdout and stderr, for failure messages and for scanning for tokens."""

    @property
    def error(self) -> dict[str, Any]:
        """The ``error`` object of the script's last line (it failed)."""
        assert self.returncode == 1, self.output
        error: dict[str, Any] = self.lines[-1]["error"]
        return error


def _finished(proc: asyncio.subprocess.Process, out: bytes, err: bytes) -> Finished:
    assert proc.returncode is not None
    stdout = out.decode()
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return Finished(proc.returncode, lines, stdout + err.decode())


async def _start(script: str, env: Mapping[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        NODE,
        "--import",
        "tsx",
        script,
        *args,
        cwd=REPO_ROOT_TS,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def watch_run(env: Mapping[str, str], run_id: str) -> Finished:
    """Run ``e2e/watch-run.ts``: start ``polyglot`` as ``run_id`` and watch it to the end."""
    proc = await _start("e2e/watch-run.ts", env, run_id)
    out, err = await asyncio.wait_for(proc.communicate(), _SCRIPT_TIMEOUT)
    return _finished(proc, out, err)


class StepWorkerProcess:
    """A running ``e2e/step-worker.ts``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.finished: Finished | None = None
        """Set once the process has ended and its output is read."""

    async def wait(self) -> Finished:
        """Wait for the process to end (on its own, or after SIGTERM) and read its output."""
        if self.finished is None:
            out, err = await asyncio.wait_for(self.proc.communicate(), _SCRIPT_TIMEOUT)
            self.finished = _finished(self.proc, out, err)
        return self.finished


@asynccontextmanager
async def ts_step_worker(env: Mapping[str, str]) -> AsyncIterator[StepWorkerProcess]:
    """Run ``e2e/step-worker.ts`` until the block ends (then SIGTERM: it drains and exits)."""
    running = StepWorkerProcess(await _start("e2e/step-worker.ts", env))
    try:
        assert running.proc.stdout is not None
        ready = await asyncio.wait_for(running.proc.stdout.readline(), _SCRIPT_TIMEOUT)
        assert ready.decode().strip() == "step worker ready"
        yield running
    finally:
        if running.proc.returncode is None:
            running.proc.send_signal(signal.SIGTERM)
        await running.wait()


@asynccontextmanager
async def python_worker(
    address: str, credentials: grpc.ChannelCredentials, token: str | None
) -> AsyncIterator[None]:
    """Serve the workflow ``polyglot`` from this process until the block ends."""
    worker = Worker(address, polyglot, credentials=credentials, token=token)
    runner = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        worker.stop()
        await runner


def assert_no_token_leaked(
    tokens: Tokens, caplog: pytest.LogCaptureFixture, *outputs: str, extra: str = ""
) -> None:
    """No token (nor ``extra``) in the scripts' output or in anything this process logged."""
    secrets = [*tokens.all(), *([extra] if extra else [])]
    texts = [*outputs]
    texts += [r.getMessage() + repr(r.args) + (r.exc_text or "") for r in caplog.records]
    for text in texts:
        for secret in secrets:
            assert secret not in text, "a token leaked into output or logs"


async def tls_coordinator(
    start_coordinator: StartCoordinator, pki: Pki, tokens: Tokens, *, mutual: bool = False
) -> str:
    """Start a coordinator with the token file and TLS; return its ``host:port``."""
    c: Coordinator = await start_coordinator(
        tls=TlsConfig(
            cert_chain=pki.server_cert,
            private_key=pki.server_key,
            client_ca=pki.ca if mutual else None,
        ),
        auth_tokens=TokenTable.load(tokens.file),
    )
    return f"127.0.0.1:{c.port}"


async def test_a_typescript_client_and_step_worker_with_tokens_over_tls(
    pki: Pki,
    pem_files: PemFiles,
    tokens: Tokens,
    start_coordinator: StartCoordinator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    address = await tls_coordinator(start_coordinator, pki, tokens)
    trusted = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    marks = tmp_path / "marks"
    marks.mkdir()
    worker_env = ts_env(
        address, token=tokens.worker, ca=pem_files.ca, LEDGERFLOW_E2E_MARKS=str(marks)
    )
    async with python_worker(address, trusted, tokens.worker), ts_step_worker(worker_env) as ts:
        # The https:// form of the address, with the CA that signed the coordinator's cert.
        env = ts_env(f"https://{address}", token=tokens.client, ca=pem_files.ca)
        watched = await watch_run(env, "ts-over-tls")
    assert ts.finished is not None
    assert ts.finished.returncode == 0, ts.finished.output  # drained on SIGTERM
    assert watched.returncode == 0, watched.output
    statuses = [line["status"] for line in watched.lines if "status" in line]
    assert statuses[-1] == pb.RUN_STATUS_COMPLETED
    assert pb.RUN_STATUS_WAITING in statuses  # it waited on the TypeScript step
    result = {"name": "from-typescript.png", "width": 200, "by": "typescript"}
    assert watched.lines[-1] == {"result": result}
    async with await Client.connect(address, credentials=trusted, token=tokens.client) as client:
        step = (await client.get_run("ts-over-tls")).steps["resize"]
    assert (step.status, step.worker_kind) == (pb.STEP_STATUS_COMPLETED, "images")
    assert (marks / "resize").read_text().splitlines() == ["attempt 1"]
    assert_no_token_leaked(tokens, caplog, watched.output, ts.finished.output)


async def test_a_typescript_client_without_a_valid_token_is_refused(
    pki: Pki,
    pem_files: PemFiles,
    tokens: Tokens,
    start_coordinator: StartCoordinator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    address = await tls_coordinator(start_coordinator, pki, tokens)
    wrong = "lf_not-a-real-token-0123456789"
    missing = await watch_run(ts_env(address, ca=pem_files.ca), "no-token")
    unknown = await watch_run(ts_env(address, token=wrong, ca=pem_files.ca), "wrong-token")
    for finished in (missing, unknown):
        assert finished.error["name"] == "LedgerflowError"
        assert finished.error["code"] == "Unauthenticated"
    # A valid token without the client scope.
    scoped = await watch_run(ts_env(address, token=tokens.worker, ca=pem_files.ca), "worker-token")
    assert scoped.error["name"] == "PermissionDeniedError"
    assert scoped.error["code"] == "PermissionDenied"
    assert "lacks the 'client' scope" in scoped.error["message"]
    async with await Client.connect(
        address, credentials=grpc.ssl_channel_credentials(pki.ca), token=tokens.admin
    ) as client:
        assert (await client.list_runs()).runs == []  # nothing was started
    outputs = (missing.output, unknown.output, scoped.output)
    assert_no_token_leaked(tokens, caplog, *outputs, extra=wrong)


async def test_a_typescript_step_worker_with_a_client_token_is_refused_for_good(
    pki: Pki,
    pem_files: PemFiles,
    tokens: Tokens,
    start_coordinator: StartCoordinator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    address = await tls_coordinator(start_coordinator, pki, tokens)
    async with ts_step_worker(ts_env(address, token=tokens.client, ca=pem_files.ca)) as ts:
        refused = await ts.wait()
    assert refused.error["name"] == "WorkerRefusedError"
    assert refused.error["code"] == "PermissionDenied"
    assert_no_token_leaked(tokens, caplog, refused.output)


async def test_a_typescript_client_must_trust_the_coordinators_certificate(
    pki: Pki,
    pem_files: PemFiles,
    tokens: Tokens,
    start_coordinator: StartCoordinator,
) -> None:
    address = await tls_coordinator(start_coordinator, pki, tokens)
    # Node's own roots (no CA given), and a CA that did not sign the coordinator's certificate.
    no_ca = await watch_run(ts_env(f"https://{address}", token=tokens.client), "no-ca")
    other_ca = ts_env(address, token=tokens.client, ca=pem_files.other_ca)
    untrusted = await watch_run(other_ca, "other-ca")
    for finished in (no_ca, untrusted):
        assert finished.error["name"] == "CoordinatorUnavailableError"
        assert "TLS handshake failed" in finished.error["message"]
    # Plaintext to the TLS port.
    plaintext = await watch_run(ts_env(address, token=tokens.client), "plaintext")
    assert plaintext.error["name"] == "CoordinatorUnavailableError"


async def test_typescript_over_mutual_tls(
    pki: Pki,
    pem_files: PemFiles,
    tokens: Tokens,
    start_coordinator: StartCoordinator,
    tmp_path: Path,
) -> None:
    address = await tls_coordinator(start_coordinator, pki, tokens, mutual=True)
    client_cert = (pem_files.client_cert, pem_files.client_key)
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=pki.ca, private_key=pki.client_key, certificate_chain=pki.client_cert
    )
    # Without a client certificate the coordinator ends the connection after the handshake.
    no_cert = await watch_run(ts_env(address, token=tokens.client, ca=pem_files.ca), "no-cert")
    assert no_cert.error["name"] == "CoordinatorUnavailableError"
    marks = tmp_path / "marks"
    marks.mkdir()
    worker_env = ts_env(
        address,
        token=tokens.worker,
        ca=pem_files.ca,
        client_cert=client_cert,
        LEDGERFLOW_E2E_MARKS=str(marks),
    )
    async with python_worker(address, with_cert, tokens.worker), ts_step_worker(worker_env) as ts:
        env = ts_env(address, token=tokens.client, ca=pem_files.ca, client_cert=client_cert)
        watched = await watch_run(env, "ts-mtls")
    assert ts.finished is not None
    assert ts.finished.returncode == 0, ts.finished.output
    assert watched.returncode == 0, watched.output
    assert watched.lines[-1] == {
        "result": {"name": "from-typescript.png", "width": 200, "by": "typescript"}
    }
    assert (marks / "resize").read_text().splitlines() == ["attempt 1"]
