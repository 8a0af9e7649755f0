"""Envoy configured from the Kubernetes manifests of deploy/k8s/, as their control planes would.

There is no cluster here, so istiod and Emissary cannot run; what they program into Envoy
can. These functions translate the repository's own Istio extension provider
(`istio/istiod-values.yaml`) and Emissary AuthService and Mapping (`ambassador/`) into the
ext_authz filter and routes each control plane documents for those fields, and run real
Envoy with it in front of the validator and the demo model API. Unlike devstack/gateways/
envoy.yaml there is no header-stripping filter: neither control plane adds one, so the
validator's own answer must overwrite identity headers a client sends. What drops
look-alike header names (`X_Auth_Roles`, `X.Auth.Roles`) comes from the manifests too: the
Istio `EnvoyFilter` of `istio/header-aliases.yaml` (its patches applied as istiod applies
them to the sidecar's inbound connection manager) and the `ambassador` Module of
`ambassador/module.yaml` (`headers_with_underscores_action`, `lua_scripts`).

Istio: https://istio.io/latest/docs/reference/config/istio.mesh.v1alpha1/ (EnvoyExternalAuthorizationHttpProvider).
Emissary: https://www.getambassador.io/docs/emissary/latest/topics/running/services/auth-service
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from devstack.services import BIN, ROOT, ServiceSpec, free_port

K8S = ROOT / "deploy" / "k8s"
# Emissary always lets these through, in both directions, besides the AuthService's lists.
EMISSARY_REQUEST_HEADERS = (
    "authorization",
    "cookie",
    "from",
    "proxy-authorization",
    "user-agent",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
)
EMISSARY_AUTH_HEADERS = ("location", "authorization", "proxy-authenticate", "set-cookie", "www-authenticate")


def _exact(names: Any) -> dict[str, Any]:
    return {"patterns": [{"exact": name, "ignore_case": True} for name in names]}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _ext_authz(
    validator_port: int,
    *,
    fail_open: bool,
    status_on_error: int,
    timeout_s: float,
    path_prefix: str,
    request_headers: list[str],
    upstream_headers: list[str],
    client_headers: list[str],
) -> dict[str, Any]:
    """Envoy's ext_authz HTTP filter config, the fields both control planes set."""
    return {
        "transport_api_version": "V3",
        "failure_mode_allow": fail_open,
        "status_on_error": {"code": status_on_error},
        "http_service": {
            "server_uri": {
                "uri": f"http://127.0.0.1:{validator_port}",
                "cluster": "mltokens_validator",
                "timeout": f"{timeout_s}s",
            },
            "path_prefix": path_prefix,
            "authorization_request": {"allowed_headers": _exact(request_headers)},
            "authorization_response": {
                "allowed_upstream_headers": _exact(upstream_headers),
                "allowed_client_headers": _exact(client_headers),
            },
        },
    }


HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "envoy.filters.http.router"
ROUTER_FILTER = {
    "name": ROUTER,
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def _merge(into: dict[str, Any], value: dict[str, Any]) -> None:
    """Protobuf merge of YAML: messages merge field by field, scalars replace, lists append."""
    for key, v in value.items():
        if isinstance(v, dict) and isinstance(into.get(key), dict):
            _merge(into[key], v)
        elif isinstance(v, list) and isinstance(into.get(key), list):
            into[key] += v
        else:
            into[key] = v


def _istio_envoy_filters(hcm: dict[str, Any]) -> None:
    """Apply the EnvoyFilters of deploy/k8s/istio to the sidecar's inbound connection manager.

    Only what those files use: MERGE on the connection manager, INSERT_BEFORE/INSERT_AFTER/
    INSERT_FIRST on its HTTP filters; any other patch fails the test rather than being ignored.
    """
    for path in sorted((K8S / "istio").glob("*.yaml")):
        for doc in (d for d in _documents(path) if d.get("kind") == "EnvoyFilter"):
            for patch in doc["spec"]["configPatches"]:
                match, op, value = patch["match"], patch["patch"]["operation"], patch["patch"]["value"]
                assert match["context"] in ("SIDECAR_INBOUND", "ANY"), match
                target = match["listener"]["filterChain"]["filter"]
                assert target["name"] == "envoy.filters.network.http_connection_manager", target
                if patch["applyTo"] == "NETWORK_FILTER" and op == "MERGE":
                    assert value["typed_config"]["@type"] == HCM_TYPE
                    _merge(hcm, {k: v for k, v in value["typed_config"].items() if k != "@type"})
                elif patch["applyTo"] == "HTTP_FILTER" and op in ("INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST"):
                    filters = hcm["http_filters"]
                    if op == "INSERT_FIRST":
                        filters.insert(0, value)
                        continue
                    at = [f["name"] for f in filters].index(target["subFilter"]["name"])
                    filters.insert(at if op == "INSERT_BEFORE" else at + 1, value)
                else:
                    raise AssertionError(f"{path.name}: EnvoyFilter patch not translated here: {patch}")


def _emissary_module(hcm: dict[str, Any]) -> None:
    """The `ambassador` Module's settings deploy/k8s/ambassador uses, as Emissary programs them."""
    config = next(
        d["spec"]["config"]
        for d in _documents(K8S / "ambassador" / "module.yaml")
        if d["kind"] == "Module" and d["metadata"]["name"] == "ambassador"
    )
    if "headers_with_underscores_action" in config:
        hcm.setdefault("common_http_protocol_options", {})["headers_with_underscores_action"] = config[
            "headers_with_underscores_action"
        ]
    if "lua_scripts" in config:  # Emissary saves it with the Module, before CORS and the AuthService
        hcm["http_filters"].insert(
            0,
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "inline_code": config["lua_scripts"],
                },
            },
        )


def istio_ext_authz(validator_port: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ext_authz filter for the mesh's `mltokens` provider, and the routes (all to the model API)."""
    providers = yaml.safe_load((K8S / "istio" / "istiod-values.yaml").read_text())["meshConfig"]["extensionProviders"]
    p = next(x for x in providers if x["name"] == "mltokens")["envoyExtAuthzHttp"]
    config = _ext_authz(
        validator_port,
        fail_open=p.get("failOpen", False),
        status_on_error=int(p.get("statusOnError", 403)),
        timeout_s=float(p["timeout"].removesuffix("s")),
        path_prefix=p.get("pathPrefix", ""),
        request_headers=p.get("includeRequestHeadersInCheck", []),
        upstream_headers=p.get("headersToUpstreamOnAllow", []),
        client_headers=p.get("headersToDownstreamOnDeny", []),
    )
    return config, [{"match": {"prefix": "/"}, "route": {"cluster": "model_api"}}]


def emissary_ext_authz(validator_port: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ext_authz filter for the `mltokens` AuthService, and the routes of its Mappings."""
    docs = _documents(K8S / "ambassador" / "authservice.yaml")
    auth = next(d["spec"] for d in docs if d["kind"] == "AuthService")
    passed = [*EMISSARY_AUTH_HEADERS, *auth.get("allowed_authorization_headers", [])]
    config = _ext_authz(
        validator_port,
        fail_open=auth.get("failure_mode_allow", False),
        status_on_error=auth.get("status_on_error", {}).get("code", 403),
        timeout_s=auth.get("timeout_ms", 5000) / 1000,
        path_prefix=auth.get("path_prefix", ""),
        request_headers=[*EMISSARY_REQUEST_HEADERS, *auth.get("allowed_request_headers", [])],
        upstream_headers=passed,
        client_headers=passed,
    )
    routes = [
        {
            "match": {"prefix": m["prefix"]},
            "route": {"cluster": "model_api", "prefix_rewrite": m.get("rewrite", m["prefix"])},
        }
        for m in (d["spec"] for d in docs if d["kind"] == "Mapping")
    ]
    return config, routes


def _cluster(name: str, port: int) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


Translation = Callable[[int], tuple[dict[str, Any], list[dict[str, Any]]]]


def envoy_bootstrap(
    admin: int, port: int, hcm: dict[str, Any], clusters: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """An Envoy bootstrap: the admin listener on `admin`, one HTTP listener on `port` whose connection
    manager is `hcm`, and `clusters` (all on 127.0.0.1)."""
    listener = {
        "name": "gateway",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [listener], "clusters": clusters or []},
    }


def _spec(
    name: str,
    translate: Translation,
    customize: Callable[[dict[str, Any]], None],
    workdir: Path,
    port: int,
    validator_port: int,
    upstream_port: int,
) -> ServiceSpec:
    ext_authz, routes = translate(validator_port)
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "route_config": {"virtual_hosts": [{"name": "model_api", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            {
                "name": "envoy.filters.http.ext_authz",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                    **ext_authz,
                },
            },
            ROUTER_FILTER,
        ],
    }
    customize(hcm)
    admin = free_port()
    clusters = [_cluster("mltokens_validator", validator_port), _cluster("model_api", upstream_port)]
    bootstrap = envoy_bootstrap(admin, port, hcm, clusters)
    conf = workdir / name / "envoy.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    return ServiceSpec(
        name,
        [str(BIN / "envoy"), "-c", str(conf), "--base-id", str(admin), "-l", "warning", "--concurrency", "1"],
        f"http://127.0.0.1:{admin}/ready",
    )


def istio_spec(workdir: Path, port: int, validator_port: int, upstream_port: int) -> ServiceSpec:
    return _spec("istio-envoy", istio_ext_authz, _istio_envoy_filters, workdir, port, validator_port, upstream_port)


def emissary_spec(workdir: Path, port: int, validator_port: int, upstream_port: int) -> ServiceSpec:
    return _spec("emissary-envoy", emissary_ext_authz, _emissary_module, workdir, port, validator_port, upstream_port)


MESH_SPECS = {"istio": istio_spec, "emissary": emissary_spec}
