"""The token file: its format, its validation, and the scope each method needs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ledgerflow.coordinator.api._auth import (
    Principal,
    TokenFileError,
    TokenTable,
    hash_token,
    new_token,
    required_scope,
)


def test_lookup_by_hash(tmp_path: Path) -> None:
    token = new_token()
    path = tmp_path / "t.toml"
    path.write_text(
        f'[[tokens]]\nname = "a"\nsha256 = "{hash_token(token)}"\n'
        'scopes = ["client", "worker"]\nnamespace = "*"\n'
    )
    table = TokenTable.load(path)
    assert table.lookup(token) == Principal("a", frozenset({"client", "worker"}), "*")
    assert table.lookup(token + "x") is None
    assert table.lookup(hash_token(token)) is None  # the hash is not a token
    assert token not in path.read_text()


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ('name = "a"\nsha256 = "lf_plaintexttoken"\nscopes = ["client"]', "sha256"),
        ('name = "a"\nsha256 = "{h}"\nscopes = []', "scopes"),
        ('name = "a"\nsha256 = "{h}"\nscopes = ["root"]', "scopes"),
        ('name = ""\nsha256 = "{h}"\nscopes = ["client"]', "name"),
        ('name = "a"\nsha256 = "{h}"\nscopes = ["client"]\nnamespace = "A B"', "namespace"),
        ('name = "a"\nsha256 = "{h}"\nscopes = ["client"]\nnamespace = "-x"', "namespace"),
        ('name = "a"\nsha256 = "{h}"\nscopes = ["client"]\ntoken = "x"', "unknown keys"),
    ],
)
def test_malformed_entries_are_refused(tmp_path: Path, entry: str, complaint: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text("[[tokens]]\n" + entry.replace("{h}", hash_token("t")) + "\n")
    with pytest.raises(TokenFileError, match=complaint):
        TokenTable.load(path)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot read"):
        TokenTable.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[tokens]\n")
    with pytest.raises(TokenFileError, match="not valid TOML"):
        TokenTable.load(bad)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(TokenFileError, match="no \\[\\[tokens\\]\\]"):
        TokenTable.load(empty)
    twice = tmp_path / "twice.toml"
    entry = f'[[tokens]]\nname = "a"\nsha256 = "{hash_token("t")}"\nscopes = ["client"]\n'
    twice.write_text(entry + entry.replace('"a"', '"b"'))
    with pytest.raises(TokenFileError, match="repeats the hash"):
        TokenTable.load(twice)


def test_required_scopes() -> None:
    assert required_scope("/ledgerflow.v1.WorkerService/Connect") == "worker"
    assert required_scope("/ledgerflow.v1.RunService/StartRun") == "client"
    assert required_scope("/grpc.health.v1.Health/Check") is None
    assert required_scope("/grpc.reflection.v1alpha.ServerReflection/Info") == ""
    assert Principal("ops", frozenset({"admin"})).allows("worker")
    assert not Principal("app", frozenset({"client"})).allows("worker")


def test_admin_new_token_prints_a_loadable_entry(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            *(sys.executable, "-m", "ledgerflow.cli", "admin", "new-token", "--name", "ci"),
            *("--scope", "worker", "--scope", "client"),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    token, _, entry = out.partition("\n")
    assert token.startswith("lf_")
    assert token not in entry
    path = tmp_path / "t.toml"
    path.write_text(entry)
    assert tomllib.loads(entry)["tokens"][0]["namespace"] == "*"
    assert TokenTable.load(path).lookup(token) == Principal(
        "ci", frozenset({"client", "worker"}), "*"
    )


def test_admin_new_token_confines_a_token_to_a_namespace(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            *(sys.executable, "-m", "ledgerflow.cli", "admin", "new-token", "--name", "billing"),
            *("--scope", "client", "--namespace", "billing"),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    token, _, entry = out.partition("\n")
    path = tmp_path / "t.toml"
    path.write_text(entry)
    principal = TokenTable.load(path).lookup(token)
    assert principal == Principal("billing", frozenset({"client"}), "billing")
