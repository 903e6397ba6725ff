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
