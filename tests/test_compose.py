"""docker-compose.yml is a valid Compose file with a health-checked Postgres.

No Docker engine runs in CI, so the file is validated offline against the Compose
Specification's JSON schema (compose-spec/compose-spec, Apache-2.0). That schema is not
fetched: check-jsonschema (a dev dependency) vendors it and keeps it current.
"""

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    text = (
        files("check_jsonschema.builtin_schemas.vendor")
        .joinpath("compose-spec.json")
        .read_text(encoding="utf-8")
    )
    schema = json.loads(text)
    assert schema["title"] == "Compose Specification"
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _errors(validator: jsonschema.protocols.Validator, document: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_compose_file_matches_compose_spec(
    validator: jsonschema.protocols.Validator, compose: dict[str, Any]
) -> None:
    assert _errors(validator, compose) == []


def test_schema_rejects_a_broken_healthcheck(
    validator: jsonschema.protocols.Validator, compose: dict[str, Any]
) -> None:
    # Guards against a vacuous pass (e.g. an empty or permissive schema).
    broken = json.loads(json.dumps(compose))
    broken["services"]["postgres"]["healthcheck"]["test"] = {"cmd": "pg_isready"}
    broken["services"]["postgres"]["healthcheck"]["probe"] = "pg_isready"
    errors = _errors(validator, broken)
    assert any(e.startswith("services/postgres/healthcheck/test:") for e in errors), errors
    assert any("probe" in e for e in errors), errors


def test_postgres_is_health_checked_with_pg_isready(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:16")
    test = postgres["healthcheck"]["test"]
    command = test if isinstance(test, str) else " ".join(test)
    assert "pg_isready" in command


def test_postgres_credentials_and_named_volume(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    env = postgres["environment"]
    assert env["POSTGRES_USER"] == env["POSTGRES_PASSWORD"] == env["POSTGRES_DB"] == "ledgerflow"
    named = {v.split(":", 1)[0] for v in postgres["volumes"] if isinstance(v, str)}
    assert named & set(compose["volumes"]), "the data directory must live on a named volume"


# --- the ledgerflow services and the image they run ---------------------------------------

ROOT = COMPOSE_FILE.parent


def _command(value: str | list[str]) -> str:
    return value if isinstance(value, str) else " ".join(value)


def test_coordinator_waits_for_a_healthy_postgres_and_migrates_before_serving(
    compose: dict[str, Any],
) -> None:
    coordinator = compose["services"]["coordinator"]
    assert coordinator["depends_on"]["postgres"]["condition"] == "service_healthy"
    command = _command(coordinator["command"])
    assert command.index("ledgerflow db upgrade") < command.index("ledgerflow server")
    assert "&&" in command  # a failed migration stops the service instead of serving
    env = coordinator["environment"]
    postgres = compose["services"]["postgres"]["environment"]
    user, password, db = (
        postgres[k] for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
    )
    assert env["LEDGERFLOW_DATABASE_URL"] == f"postgresql://{user}:{password}@postgres:5432/{db}"
    assert env["LEDGERFLOW_LISTEN"] == "0.0.0.0:7170"
    assert "127.0.0.1:7170:7170" in coordinator["ports"]


def test_worker_waits_for_a_healthy_coordinator_and_serves_the_saga(
    compose: dict[str, Any],
) -> None:
    from ledgerflow.cli._worker import load_target

    worker = compose["services"]["worker"]
    assert worker["depends_on"]["coordinator"]["condition"] == "service_healthy"
    assert worker["image"] == compose["services"]["coordinator"]["image"]
    argv = worker["command"]
    assert argv[:2] == ["ledgerflow", "worker"]
    assert argv[argv.index("--address") + 1] == "coordinator:7170"
    # The module the worker serves exists in the image's working directory (the repo's).
    registry = load_target(argv[2])
    assert [d.name for d in registry] == ["examples.order_saga"]  # type: ignore[union-attr]


async def test_the_coordinator_healthcheck_asks_grpc_health_of_a_real_coordinator(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    import asyncio
    import sys

    from ledgerflow.coordinator._server import Coordinator, ServerConfig

    test = compose["services"]["coordinator"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert test[1] == "python"
    argv = [sys.executable, *test[2:]]

    async def probe(address: str) -> int:
        command = [part.replace("127.0.0.1:7170", address) for part in argv]
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        return await asyncio.wait_for(proc.wait(), timeout=60)

    coordinator = Coordinator(
        ServerConfig(listen="127.0.0.1:0", database_url=f"sqlite:///{tmp_path / 'h.db'}")
    )
    await coordinator.start()
    address = f"127.0.0.1:{coordinator.port}"
    try:
        assert await probe(address) == 0
    finally:
        await coordinator.stop()
    assert await probe(address) != 0  # nothing serves there any more


def test_dockerfile_installs_the_coordinator_extra_and_runs_as_non_root() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    assert "RUN pip install '.[coordinator]'" in lines
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "the image must not run as root"
    assert users[-1] not in {"root", "0"}
    for line in lines:
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY of a missing path: {source}"
    # What the image copies is not ignored by .dockerignore.
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert not {"sdk", "coordinator", "examples", "pyproject.toml"} & set(ignored)
