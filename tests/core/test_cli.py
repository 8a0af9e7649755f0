"""The `mltokens` command line, as an operator uses it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import PASSPHRASE
from token_service.cli import main
from token_service.store.db import head_revision

MLTOKENS = str(Path(sys.executable).with_name("mltokens"))
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(db_url: str) -> dict[str, str]:
    return {
        "MLTOKENS_DATABASE_URL": db_url,
        "MLTOKENS_KEY_PASSPHRASE": PASSPHRASE,
        "MLTOKENS_ISSUER_URL": "http://issuer.test",
    }


def run(env: dict[str, str], *args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)


def test_create_check_revoke_check(env):
    """The issue's 'done when': create, check says valid; revoke, check says revoked."""
    full_env = os.environ | env
    sh = lambda *a: subprocess.run([MLTOKENS, *a], env=full_env, capture_output=True, text=True, timeout=60)  # noqa: E731
    assert sh("keys", "rotate").returncode == 0
    created = sh(
        "token",
        "create",
        "--owner-id",
        "u1",
        "--owner-name",
        "alice",
        "--name",
        "nb",
        "--role",
        "model:sentiment:predict",
        "--ttl",
        "1d",
    )
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
    created = run(env, "token", "create", "--owner-id", "u1", "--name", "a", "--role", "model:vision:predict", "--json")
    body = json.loads(created.output)
    token_id = body["id"]
    assert body["token"].count(".") == 2 and body["owner_name"] == "u1"
    shown = run(env, "token", "show", token_id)
    assert "model:vision:predict" in shown.output and body["token"] not in shown.output
    renewed = json.loads(run(env, "token", "renew", token_id, "--ttl", "2h", "--json").output)
    assert renewed["renew_count"] == 1 and renewed["token"] != body["token"]
    assert run(env, "check", "-", input=renewed["token"]).exit_code == 0
    assert run(env, "check", body["token"]).exit_code == 1  # renewed away
    rotated = run(env, "token", "rotate", token_id)
    assert "the previous token string works until" in rotated.output
    assert run(env, "check", "-", input=rotated.stdout.split()[-1]).exit_code == 0
    assert run(env, "check", "-", input=renewed["token"]).exit_code == 0  # rotated: it works for the grace
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
        (
            ["token", "create", "--owner-id", "u", "--name", "n", "--role", "model:vision:predict", "--ttl", "1000d"],
            "at most 90 days",
        ),
        (
            ["token", "create", "--owner-id", "u", "--name", "n", "--role", "r", "--ttl", "1000000000d"],
            "ttl: at most 36500d",
        ),
        (
            ["token", "create", "--owner-id", "u" * 129, "--name", "n", "--role", "model:vision:predict"],
            "The owner id may be at most 128 characters.",
        ),
        (
            ["token", "revoke", "00000000-0000-0000-0000-000000000000", "--reason", "\u202eoops"],
            "The reason may not contain control characters.",
        ),
    ],
)
def test_errors_are_one_clear_line(env, args, message):
    run(env, "keys", "rotate")
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, code, field",
    [
        (["token", "show", "nope"], "not_found", "id"),
        (
            ["token", "create", "--owner-id", "u", "--name", "n", "--role", "model:vision:predict", "--ttl", "1000d"],
            "ttl_too_long",
            "ttl",
        ),
        (
            ["token", "create", "--owner-id", "u", "--name", "n", "--role", "model:x:train"],
            "roles_not_allowed",
            "roles",
        ),
    ],
)
def test_under_json_an_error_is_json_with_its_code_on_stdout(env, args, code, field):
    run(env, "keys", "rotate")
    result = CliRunner().invoke(main, [*args, "--json"], env=env)
    assert result.exit_code == 1 and result.stderr == ""
    error = json.loads(result.stdout)["error"]
    assert (error["code"], error["field"]) == (code, field) and error["message"]
    plain = CliRunner().invoke(main, args, env=env)
    assert plain.exit_code == 1 and plain.stdout == "" and plain.stderr == f"Error: {error['message']}\n"


def test_an_absurd_ttl_is_one_line_on_stderr(env):
    """The real command: an OverflowError traceback before."""
    result = subprocess.run(
        [MLTOKENS, "token", "create", "--owner-id", "u", "--name", "n", "--role", "r", "--ttl", "1000000000d"],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Error: Invalid value for '--ttl': ttl: at most 36500d (100 years)"


def test_configuration_errors_are_clear(env, tmp_path):
    result = CliRunner().invoke(main, ["db", "current"], env=env | {"MLTOKENS_MAX_TTL": "soon"})
    assert result.exit_code == 1 and "configuration error: max_ttl" in result.output
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "missing.toml"), "db", "current"], env=env)
    assert result.exit_code == 1 and "config file not found" in result.output
    result = CliRunner().invoke(main, ["keys", "rotate"], env=env | {"MLTOKENS_KEY_PASSPHRASE": ""})
    assert result.exit_code == 1 and "key_passphrase" in result.output


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["db", "upgrade"],
        ["db", "current"],
        ["token", "list"],
        ["keys", "list"],
        ["token", "show", "00000000-0000-0000-0000-000000000000"],
        ["prune"],
    ],
    ids=" ".join,
)
def test_store_failures_name_their_cause_in_one_line(args, env, empty_db_url):
    """A refused connection, a missing database and missing tables are three different messages, each
    saying what to do, for read-only commands too (never "could not complete the change")."""
    base = empty_db_url.rsplit("/", 1)[0]
    cases = {
        "postgresql://postgres@127.0.0.1:1/none": "cannot connect to PostgreSQL at 127.0.0.1:1: connection refused",
        f"{base}/mlt_no_such_database": "database mlt_no_such_database does not exist on PostgreSQL at",
    }
    if args[0] != "db":  # `db upgrade` makes the tables; `db current` says "base" on an empty database
        cases[empty_db_url] = "the token store's tables are missing in database"
    for url, cause in cases.items():
        line = _one_line_error(CliRunner().invoke(main, args, env=env | {"MLTOKENS_DATABASE_URL": url}))
        assert cause in line and "nothing was changed" not in line
        if url == empty_db_url or "does not exist" in cause:
            assert "run `mltokens db upgrade`" in line


def test_db_upgrade_with_postgres_down_is_one_line_in_a_real_process(env):
    """No traceback on the terminal (CliRunner would hide one that only a real process prints)."""
    result = subprocess.run(
        [MLTOKENS, "db", "upgrade"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | env | {"MLTOKENS_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"},
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "Error: cannot connect to PostgreSQL at 127.0.0.1:1: connection refused; "
        "is it running? (check MLTOKENS_DATABASE_URL)"
    ]


@pytest.mark.parametrize(
    "variable, nearest",
    [
        ("MLTOKENS_MAX_TLL", "MLTOKENS_MAX_TTL"),
        ("MLTOKENS_DATABSE_URL", "MLTOKENS_DATABASE_URL"),
        ("MLTOKENS_VALIDATOR_PORTT", "MLTOKENS_VALIDATOR_PORT"),
        ("MLTOKENS_VALIDATR_WORKERS", "MLTOKENS_VALIDATOR_WORKERS"),
    ],
)
def test_a_misspelled_variable_stops_every_command_naming_the_nearest(variable, nearest, env):
    for args in (["config"], ["token", "list"], ["serve"]):
        line = _one_line_error(CliRunner().invoke(main, args, env=env | {variable: "1"}))
        assert f"unknown environment variable {variable}; did you mean {nearest}?" in line


def test_variables_of_the_tests_and_the_demo_are_not_settings(env):
    """MLTOKENS_TEST_* and MLTOKENS_DEMO_* belong to the test suite and the demo launcher."""
    tools = {"MLTOKENS_TEST_PG": "postgresql://x", "MLTOKENS_DEMO_PG": "postgresql://y", "MLTOKENS_CONFIG": ""}
    assert CliRunner().invoke(main, ["config"], env=env | tools).exit_code == 0
    line = _one_line_error(CliRunner().invoke(main, ["config"], env=env | {"MLTOKENS_NOTHING_LIKE_IT": "1"}))
    assert "unknown environment variable MLTOKENS_NOTHING_LIKE_IT; `mltokens config` lists the settings" in line


def test_config_prints_durations_as_the_reference_writes_them():
    shown = dict(
        line.split("=", 1)
        for line in CliRunner().invoke(main, ["config"], env={}).output.splitlines()
        if not line.startswith(" ")
    )
    assert shown["MLTOKENS_DEFAULT_TTL"] == "30d" and shown["MLTOKENS_LEEWAY"] == "30s"
    reference = (ROOT / "docs" / "configuration.md").read_text()
    documented = dict(re.findall(r"^\| `(MLTOKENS_(?!VALIDATOR_)\w+)` \| `([^`]*)` \|", reference, re.M))
    assert documented and {k: shown[k] for k in documented} == {k: v.strip() for k, v in documented.items()}


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output == f"mltokens, version {importlib.metadata.version('mltokens')}\n"


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["config"], ["token", "create", "--help"]])
def test_commands_that_need_no_database_do_not_load_sqlalchemy_or_alembic(args):
    probe = (
        "import sys\nfrom token_service.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
        "    pass\nprint(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'alembic'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("MLTOKENS_")},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_issuer_serve_on_a_busy_port_or_an_unknown_host_is_one_line(env):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        line = _one_line_error(CliRunner().invoke(main, ["issuer", "serve", "--port", str(port)], env=env))
        assert line == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    line = _one_line_error(CliRunner().invoke(main, ["issuer", "serve", "--host", "no-such-host.invalid"], env=env))
    assert line.startswith("Error: cannot listen on no-such-host.invalid:8901: ")


def test_serve_without_the_validator_extra_says_what_to_install(tmp_path):
    """In a virtualenv holding everything this one does except the validator extra's distributions."""
    python = _without_extra(tmp_path / "venv", "validator")
    result = subprocess.run(
        [str(python), "-c", "from token_service.cli import main; main()", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("MLTOKENS_")}
        | {"MLTOKENS_VALIDATOR_POLICY_FILE": str(ROOT / "devstack" / "policy.yaml")},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("Error: the validator is not installed here (missing: uvicorn, ")
    assert result.stderr.rstrip().endswith("install it with: pip install 'mltokens[validator]'")


def _without_extra(venv: Path, extra: str) -> Path:
    """A virtualenv whose site-packages links every entry of this one's but the extra's distributions."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    excluded = set()
    for requirement in importlib.metadata.requires("mltokens"):
        if f'extra == "{extra}"' in requirement:
            dist = importlib.metadata.distribution(re.match(r"[\w.-]+", requirement).group(0))
            excluded |= {Path(f).parts[0] for f in dist.files or () if not str(f).startswith("..")}
    here = Path(sysconfig.get_paths()["purelib"])
    (there,) = venv.glob("lib/python3.*/site-packages")
    for entry in here.iterdir():
        if entry.name not in excluded:
            (there / entry.name).symlink_to(entry)
    assert excluded and not (there / "uvicorn").exists()
    return venv / "bin" / "python"


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
