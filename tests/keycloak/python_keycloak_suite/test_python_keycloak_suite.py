"""python-keycloak's own test-suite, run unchanged against the Keycloak test server and
against the real Keycloak.

The upstream tests are placed in ``.cache/python-keycloak-tests/tests`` by
``tests/keycloak/python_keycloak_suite/fetch_suite.sh`` (never committed). The tests named in
``in_scope.txt`` run in a subprocess with python-keycloak's environment variables
pointing at a fresh test server, then at the session's real Keycloak; every one of them
must be selected and pass.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import pytest

from testing import real_keycloak
from testing.keycloak_server import KeycloakTestServer
from testing.keycloak_server.fixtures import KeycloakServerInfo

ROOT = Path(__file__).resolve().parents[3]
SUITE = Path(os.environ.get("MLTOKENS_TEST_KEYCLOAK_SUITE_DIR", ROOT / ".cache" / "python-keycloak-tests"))
IN_SCOPE = Path(__file__).with_name("in_scope.txt")
# The Keycloak release whose behaviour the server reproduces; upstream tests branch
# on it (e.g. the user profile endpoint exists from 24 on).
EMULATED_KEYCLOAK = "26.3"
#: In-scope tests that fail against the real Keycloak 26.7.3 because python-keycloak 7.1.1's
#: tests predate it (docs/keycloak-test-server.md, "Upstream suite").
NOT_ON_REAL_KEYCLOAK = {
    "tests/test_keycloak_admin.py::test_client_scopes": "26.7 has 15 built-in client scopes, the test allows 10-14",
    "tests/test_keycloak_admin.py::test_a_client_scopes": "the same",
    "tests/test_keycloak_openid.py::test_introspect": "26.7 answers active:false unless the caller is in the "
    "token's aud ('Client ... is not in the token audience')",
    "tests/test_keycloak_openid.py::test_a_introspect": "the same",
}


def in_scope() -> list[str]:
    """Node ids listed in in_scope.txt."""
    lines = (line.split("#", 1)[0].strip() for line in IN_SCOPE.read_text().splitlines())
    return [line for line in lines if line]


def required(env: Mapping[str, str]) -> bool:
    """In CI (`make test` sets MLTOKENS_TEST_REQUIRE_KEYCLOAK_SUITE=1; CI services set CI=true) the
    suite must run: a missing suite fails the run instead of skipping."""
    return env.get("MLTOKENS_TEST_REQUIRE_KEYCLOAK_SUITE") == "1" or env.get("CI", "").lower() in {"true", "1"}


def suite_dir(suite: Path = SUITE, env: Mapping[str, str] = os.environ) -> Path:
    """The fetched upstream suite, or skip (fail when it is required)."""
    if not (suite / "tests" / "conftest.py").is_file():
        message = (
            f"python-keycloak's tests are not in {suite}: run PYTHON_KEYCLOAK_SRC=<python-keycloak source> "
            "tests/keycloak/python_keycloak_suite/fetch_suite.sh (see docs/keycloak-test-server.md)"
        )
        if required(env):
            pytest.fail(message)
        pytest.skip(message)
    fetched = (suite / "VERSION").read_text().strip()
    installed = importlib.metadata.version("python-keycloak")
    assert fetched == installed, (
        f"the fetched tests are for python-keycloak {fetched}, {installed} is installed: "
        "run tests/keycloak/python_keycloak_suite/fetch_suite.sh again"
    )
    return suite


def test_a_missing_suite_fails_in_ci_and_skips_elsewhere(tmp_path: Path) -> None:
    for env in ({"CI": "true"}, {"MLTOKENS_TEST_REQUIRE_KEYCLOAK_SUITE": "1"}):
        with pytest.raises(pytest.fail.Exception, match="fetch_suite.sh"):
            suite_dir(tmp_path, env)
    with pytest.raises(pytest.skip.Exception):
        suite_dir(tmp_path, {"CI": "false"})


def test_make_test_requires_the_suite() -> None:
    """CI runs `make test` (.ci/run): there the compatibility suite runs, never skips."""
    makefile = (ROOT / "Makefile").read_text()
    for target in ("test", "test-core"):
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
        assert recipe and "MLTOKENS_TEST_REQUIRE_KEYCLOAK_SUITE=1 $(CORE_PYTEST)" in recipe[1], target


def test_in_scope_list_is_well_formed() -> None:
    ids = in_scope()
    assert ids, "in_scope.txt selects no upstream test"
    assert len(ids) == len(set(ids)), "in_scope.txt lists a test twice"
    for node_id in ids:
        assert re.fullmatch(r"tests/test_keycloak_(admin|openid)\.py::test_\w+", node_id), node_id


@pytest.mark.timeout(900)
def test_python_keycloak_suite_passes(tmp_path: Path) -> None:
    suite = suite_dir()
    with KeycloakTestServer(admin_user="admin", admin_password="admin") as server:
        run_in_scope(
            suite, tmp_path, server.host, server.port, server.admin_user, server.admin_password, EMULATED_KEYCLOAK
        )


@pytest.mark.timeout(1200)
@pytest.mark.xdist_group("keycloak-real")
def test_python_keycloak_suite_passes_against_real_keycloak(
    tmp_path: Path, real_keycloak_server: KeycloakServerInfo
) -> None:
    kc = real_keycloak_server
    # Called at its public hostname (testing/real_keycloak.py): front-channel URLs such as the
    # authorization endpoint name it, and upstream tests compare them with the URL they call.
    public = urllib.parse.urlsplit(kc.public_url)
    run_in_scope(
        suite_dir(),
        tmp_path,
        public.hostname or kc.host,
        public.port or kc.port,
        kc.admin_user,
        kc.admin_password,
        real_keycloak.VERSION,
        exclude=frozenset(NOT_ON_REAL_KEYCLOAK),
    )


def run_in_scope(
    suite: Path,
    tmp_path: Path,
    host: str,
    port: int,
    admin: str,
    password: str,
    version: str,
    exclude: frozenset[str] = frozenset(),
) -> None:
    """Run the in-scope upstream tests (but `exclude`) against one server; all must run and pass."""
    assert exclude <= set(in_scope()), exclude - set(in_scope())
    ids = [i for i in in_scope() if i not in exclude]
    args_file = tmp_path / "in_scope.args"
    args_file.write_text("\n".join(ids) + "\n")
    env = {
        **os.environ,
        "KEYCLOAK_HOST": host,
        "KEYCLOAK_PORT": str(port),
        "KEYCLOAK_ADMIN": admin,
        "KEYCLOAK_ADMIN_PASSWORD": password,
        "KEYCLOAK_DOCKER_IMAGE_TAG": version,
        # Only the plugins the upstream suite needs: not CKAN's, not xdist.
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            os.devnull,
            "--rootdir",
            str(suite),
            "--confcutdir",  # no conftest.py above the suite (a stray /tmp/conftest.py once broke this run)
            str(suite),
            "-p",
            "no:cacheprovider",
            "-p",
            "pytest_asyncio.plugin",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "-q",
            "-rA",
            "--color=no",
            f"@{args_file}",
        ],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=1100,
        check=False,
    )
    output = result.stdout + result.stderr
    outcomes = re.findall(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+)", output, re.MULTILINE)
    passed = [node for outcome, node in outcomes if outcome == "PASSED"]
    others = [f"{outcome} {node}" for outcome, node in outcomes if outcome != "PASSED"]
    assert result.returncode == 0 and not others, output[-6000:]
    missing = [i for i in ids if not any(p == i or p.startswith(i + "[") for p in passed)]
    assert not missing, f"listed but not run: {missing}\n{output[-3000:]}"
    assert re.search(rf"^{len(passed)} passed", output, re.MULTILINE), output[-3000:]
