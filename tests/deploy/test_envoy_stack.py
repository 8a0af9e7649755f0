"""deploy/envoy/envoy.yaml running for real: the real Envoy with this file (only addresses
and ports moved to free loopback ports) in front of the real validator (with
deploy/validator/policy.yaml), the local issuer and the demo model API, on a migrated
PostgreSQL database. Also runs compose's Envoy health check command against it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.deploy.conftest import COMPOSE_FILE, DOCKER, ENVOY_FILE, tool
from tests.support import pg
from tests.support.stack import ServiceSpec, Stack, free_port

PREDICT = "/v1/models/sentiment/predict"
SPOOFED = {
    "X-Auth-Subject": "mallory",
    "X-Auth-Roles": "model:sentiment:train",
    "X-Auth-Token-Id": "forged",
    "X-Auth-Issuer": "https://evil.example",
}


def render_compose_envoy(out: Path, port: int, admin_port: int, validator_port: int, model_port: int) -> Path:
    """deploy/envoy/envoy.yaml with compose's host names and ports replaced by loopback ones."""
    config = yaml.safe_load(ENVOY_FILE.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    targets = {"validator": validator_port, "model_api": model_port}
    for cluster in config["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": targets[cluster["name"]]}
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm.pop("access_log")
    ext_authz = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
    ext_authz["typed_config"]["http_service"]["server_uri"]["uri"] = f"http://127.0.0.1:{validator_port}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config))
    return out


class ComposeEnvoyStack(Stack):
    """The shared test stack, with deploy/envoy/envoy.yaml as the gateway."""

    def specs(self) -> Sequence[ServiceSpec]:
        issuer, validator, model_api, _ = super().specs()
        self.admin_port = free_port()
        conf = render_compose_envoy(
            self.workdir / "compose-envoy" / "envoy.yaml",
            self.ports["gateway"],
            self.admin_port,
            self.ports["validator"],
            self.ports["model_api"],
        )
        envoy = ServiceSpec(
            "envoy",
            [tool("envoy"), "-c", str(conf), "--base-id", str(self.admin_port), "-l", "warning", "--concurrency", "1"],
            f"http://127.0.0.1:{self.admin_port}/ready",
        )
        return issuer, validator, model_api, envoy


@pytest.fixture(scope="module")
def stack(migrated_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeEnvoyStack]:
    with pg.database(template=migrated_template) as db_url:
        workdir = tmp_path_factory.mktemp("compose-envoy")
        with ComposeEnvoyStack(db_url, workdir, gateway="envoy", policy=DOCKER / "validator" / "policy.yaml") as s:
            yield s


def test_good_token_reaches_the_model_with_the_validators_identity_only(stack: ComposeEnvoyStack) -> None:
    token, token_id = stack.create_token(["model:sentiment:predict"])
    r = stack.call(PREDICT, token, SPOOFED)
    assert r.status_code == 200, r.text
    caller = r.json()["caller"]
    assert caller["x-auth-subject"] == "u-alice"
    assert caller["x-auth-token-id"] == token_id
    assert caller["x-auth-roles"] == "model:sentiment:predict"
    assert caller["x-auth-issuer"] == stack.issuer_url


def test_missing_token_is_401_with_the_challenge(stack: ComposeEnvoyStack) -> None:
    r = stack.call(PREDICT)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_route_needing_another_role_is_403_and_unknown_route_is_denied(stack: ComposeEnvoyStack) -> None:
    token, _ = stack.create_token(["model:sentiment:predict"])
    r = stack.call("/v1/models/sentiment/train", token)
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    assert stack.call("/admin", token, method="GET").status_code in (401, 403)


def test_anonymous_health_route_passes(stack: ComposeEnvoyStack) -> None:
    r = requests.get(stack.gateway_url + "/healthz", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_policy_rate_limit_answers_429_with_retry_after_through_envoy(stack: ComposeEnvoyStack) -> None:
    """deploy/validator/policy.yaml limits training (1/s, burst 2): the third quick call is 429,
    and Envoy passes the validator's Retry-After to the client."""
    token, _ = stack.create_token(["model:sentiment:train"])
    statuses = [stack.call("/v1/models/sentiment/train", token) for _ in range(3)]
    assert [r.status_code for r in statuses[:2]] == [200, 200]
    assert statuses[2].status_code == 429
    assert int(statuses[2].headers["Retry-After"]) >= 1


def test_revoked_token_stops_at_envoy(stack: ComposeEnvoyStack) -> None:
    token, token_id = stack.create_token(["model:sentiment:predict"])
    assert stack.call(PREDICT, token).status_code == 200
    stack.revoke(token_id)
    deadline = time.monotonic() + 5
    while (status := stack.call(PREDICT, token).status_code) == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 401


def test_compose_health_check_command_passes_against_this_envoy(stack: ComposeEnvoyStack) -> None:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    test = compose["services"]["envoy"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"]
    script = test[3].replace("/127.0.0.1/9901", f"/127.0.0.1/{stack.admin_port}")
    assert script != test[3], "the health check no longer asks the admin port 9901 of envoy.yaml"
    assert subprocess.run(["bash", "-c", script], timeout=10).returncode == 0


@pytest.mark.parametrize("service,port_key,port", [("validator", "validator", 8902), ("model-api", "model_api", 8903)])
def test_compose_python_health_checks_pass_against_the_real_services(
    stack: ComposeEnvoyStack, service: str, port_key: str, port: int
) -> None:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    test = compose["services"][service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    script = test[3].replace(f"127.0.0.1:{port}/", f"127.0.0.1:{stack.ports[port_key]}/")
    assert script != test[3]
    assert subprocess.run([sys.executable, "-c", script], timeout=10).returncode == 0


def test_validator_down_means_503_not_open(stack: ComposeEnvoyStack) -> None:
    """Last in this module: stops the validator."""
    token, _ = stack.create_token(["model:sentiment:predict"])
    stack.service("validator").stop()
    r = stack.call(PREDICT, token)
    assert r.status_code == 503, r.text
    assert "result" not in json.loads(r.text or "{}")


@pytest.fixture(scope="module")
def wsgi_stack(migrated_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeEnvoyStack]:
    """deploy/envoy/envoy.yaml in front of a WSGI upstream that shows its environ (tests/support/wsgi_echo.py)."""
    with pg.database(template=migrated_template) as db_url:
        workdir = tmp_path_factory.mktemp("compose-envoy-wsgi")
        with ComposeEnvoyStack(
            db_url, workdir, gateway="envoy", policy=DOCKER / "validator" / "policy.yaml", upstream="wsgi"
        ) as s:
            yield s


def test_look_alike_identity_headers_never_reach_a_wsgi_upstream(wsgi_stack: ComposeEnvoyStack) -> None:
    token, _ = wsgi_stack.create_token(["model:sentiment:predict"])
    names = ["X_Auth_Roles", "X.Auth.Roles", "x-auth_roles", "X~Auth~Subject", "X+Auth+Owner+Name", "X%Auth%Issuer"]
    r = wsgi_stack.call(PREDICT, token, dict.fromkeys(names, "spoofed"))
    assert r.status_code == 200, r.text
    environ = r.json()
    assert environ["HTTP_X_AUTH_ROLES"] == "model:sentiment:predict"
    assert not [k for k, v in environ.items() if "spoofed" in v], environ
