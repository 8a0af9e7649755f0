"""The `mltokens` command line, as an operator uses it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import PASSPHRASE
from token_service.cli import main
from token_service.store.db import head_revision

MLTOKENS = str(Path(sys.executable).with_name("mltokens"))


@pytest.fixture
def env(db_url: str) -> dict[str, str]:
    return {"MLTOKENS_DATABASE_URL": db_url, "MLTOKENS_KEY_PASSPHRASE": PASSPHRASE,
            "MLTOKENS_ISSUER_URL": "http://issuer.test"}


def run(env: dict[str, str], *args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)


def test_create_check_revoke_check(env):
    """The issue's 'done when': create, check says valid; revoke, check says revoked."""
    full_env = os.environ | env
    sh = lambda *a: subprocess.run([MLTOKENS, *a], env=full_env, capture_output=True, text=True, timeout=60)  # noqa: E731
    assert sh("keys", "rotate").returncode == 0
    created = sh("token", "create", "--owner-id", "u1", "--owner-name", "alice", "--name", "nb",
                 "--role", "model:sentiment:predict", "--ttl", "1d")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert "cannot be shown again" in created.stderr and token.count(".") == 2
    ok = sh("check", token)
    assert ok.returncode == 0 and "VALID" in ok.stdout and "INVALID" not in ok.stdout
    token_id = json.loads(sh("token", "list", "--json").stdout)[0]["id"]
    assert sh("token", "revoke", token_id, "--reason", "leaked").returncode == 0
    revoked = sh("check", token)
    assert revoked.returncode == 1 and "INVALID: revoked" in revoked.stdout and "leaked" in revoked.stdout


def test_token_commands(env):
    assert run(env, "keys", "rotate").exit_code == 0
    created = run(env, "token", "create", "--owner-id", "u1", "--name", "a", "--role", "model:vision:predict",
                  "--json")
    body = json.loads(created.output)
    token_id = body["id"]
    assert body["token"].count(".") == 2 and body["owner_name"] == "u1"
    shown = run(env, "token", "show", token_id)
    assert "model:vision:predict" in shown.output and body["token"] not in shown.output
    renewed = json.loads(run(env, "token", "renew", token_id, "--ttl", "2h", "--json").output)
    assert renewed["renew_count"] == 1 and renewed["token"] != body["token"]
    assert run(env, "check", "-", input=renewed["token"]).exit_code == 0
    assert run(env, "check", body["token"]).exit_code == 1  # renewed away
    listed = run(env, "token", "list", "--owner-id", "u1", "--active")
    assert token_id in listed.output
    assert "revoked 1 token(s)" in run(env, "token", "revoke-all", "u1").output
    assert run(env, "token", "list", "--active").output == ""
    assert "pruned 0 revocation(s)" in run(env, "prune").output


@pytest.mark.parametrize(
    "args, message",
    [
        (["token", "show", "nope"], "Token not found."),
        (["token", "revoke", "00000000-0000-0000-0000-000000000000"], "Token not found."),
        (["token", "create", "--owner-id", "u", "--name", "n", "--role", "model:x:train"], "You may not grant"),
        (["token", "create", "--owner-id", "u", "--name", "n", "--role", "r", "--ttl", "ages"], "not a duration"),
        (["token", "create", "--owner-id", "u", "--name", "n", "--role", "model:vision:predict", "--ttl", "1000d"],
         "at most 90 days"),
    ],
)
def test_errors_are_one_clear_line(env, args, message):
    run(env, "keys", "rotate")
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output


def test_configuration_errors_are_clear(env, tmp_path):
    result = CliRunner().invoke(main, ["db", "current"], env=env | {"MLTOKENS_MAX_TTL": "soon"})
    assert result.exit_code == 1 and "configuration error: max_ttl" in result.output
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "missing.toml"), "db", "current"], env=env)
    assert result.exit_code == 1 and "config file not found" in result.output
    result = CliRunner().invoke(main, ["keys", "rotate"], env=env | {"MLTOKENS_KEY_PASSPHRASE": ""})
    assert result.exit_code == 1 and "key_passphrase" in result.output


def test_store_down_is_a_clear_error(env):
    result = CliRunner().invoke(main, ["token", "list"],
                                env=env | {"MLTOKENS_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"})
    assert result.exit_code == 1 and "token store" in result.output and "Traceback" not in result.output


def test_db_and_keys_commands(empty_db_url):
    env = {"MLTOKENS_DATABASE_URL": empty_db_url, "MLTOKENS_KEY_PASSPHRASE": PASSPHRASE}
    assert "base" in run(env, "db", "current").output
    assert f"revision {head_revision()}" in run(env, "db", "upgrade").output
    assert "no signing keys" in run(env, "keys", "list").output
    run(env, "keys", "rotate")
    run(env, "keys", "rotate")
    states = run(env, "keys", "list").output
    assert states.count("current") == 1 and states.count("retired") == 1
    assert "revision base" in run(env, "db", "downgrade", "--yes").output


def test_help_everywhere():
    for args in ([], ["db"], ["keys"], ["token"], ["token", "create"], ["check"], ["prune"], ["issuer", "serve"]):
        result = CliRunner().invoke(main, [*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output
    assert "MLTOKENS_MAX_TTL" in CliRunner().invoke(main, ["config"], env={}).output
