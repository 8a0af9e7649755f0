"""Settings, route policy and gateway contracts: parsing, matching and every refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from token_service.config import Settings
from token_service.errors import ConfigError
from token_service.validator import contracts, policy
from token_service.validator.contracts import (
    ContractError,
    Original,
    canonical_path,
    decode_path,
    original_request,
)
from token_service.validator.jwks import discovery_url
from token_service.validator.policy import Policy
from token_service.validator.settings import ValidatorSettings, listen_address

CORE = Settings.from_mapping({"issuer_url": "http://issuer.test/", "audience": "model-api"})


def _vs(**raw: Any) -> ValidatorSettings:
    return ValidatorSettings.from_mapping({"policy_file": "p.yaml", **raw}, CORE)


def test_defaults_come_from_the_core_settings() -> None:
    s = _vs()
    assert s.issuers == ("http://issuer.test",) and s.audiences == ("model-api",) and s.leeway == 30.0
    assert s.database_url == CORE.database_url and s.token_id_claim == "token_id"
    assert s.required_issuers == ("http://issuer.test",)
    two = _vs(issuers="http://a,http://b")
    assert (
        two.required_issuers,
        _vs(issuers="http://a,http://b", readiness_issuers="*").required_issuers,
        _vs(issuers="http://a,http://b", readiness_issuers="http://b").required_issuers,
    ) == (("http://a",), ("http://a", "http://b"), ("http://b",))


def test_issuers_are_kept_exactly_as_written_slash_included() -> None:
    """`https://tenant/` (Auth0) and `https://tenant` are different issuers; only the local
    issuer's own URL loses its slash, as the local issuer's tokens and discovery do."""
    assert _vs(issuers=["https://tenant.example/", "http://b"]).issuers == ("https://tenant.example/", "http://b")
    keycloak = CORE.replace(issuer="keycloak", issuer_url="https://tenant.example/")
    assert ValidatorSettings.from_mapping({"policy_file": "p.yaml"}, keycloak).issuers == ("https://tenant.example/",)
    assert (
        discovery_url("https://tenant.example/")
        == discovery_url("https://tenant.example")
        == "https://tenant.example/.well-known/openid-configuration"
    )
    assert (
        discovery_url("https://kc.example/realms/ml") == "https://kc.example/realms/ml/.well-known/openid-configuration"
    )


def test_with_keycloak_the_trusted_issuer_defaults_to_the_realm() -> None:
    keycloak = Settings.from_mapping(
        {"issuer": "keycloak", "keycloak_server_url": "http://keycloak:8080/", "keycloak_admin_client_secret": "s"}
    )
    assert keycloak.issuer_url == "http://keycloak:8080/realms/mltokens"
    s = ValidatorSettings.from_mapping({"policy_file": "p.yaml"}, keycloak)
    assert s.issuers == s.token_issuers == ("http://keycloak:8080/realms/mltokens",)
    assert s.discovery == {}  # iss is where mltokens calls Keycloak: discovered there


def test_keycloak_behind_a_public_hostname_is_discovered_over_the_back_channel() -> None:
    """Keycloak's `hostname` is the public URL (the `iss`); the validator reads keys at keycloak_server_url."""
    public = Settings.from_mapping(
        {
            "issuer": "keycloak",
            "issuer_url": "http://localhost:8080/realms/mltokens",
            "keycloak_server_url": "http://keycloak:8080",
            "keycloak_admin_client_secret": "s",
        }
    )
    s = ValidatorSettings.from_mapping({"policy_file": "p.yaml"}, public)
    assert s.issuers == ("http://localhost:8080/realms/mltokens",)
    assert s.discovery == {
        "http://localhost:8080/realms/mltokens": "http://keycloak:8080/realms/mltokens/.well-known/openid-configuration"
    }
    other = "http://idp.test/=http://idp.internal/.well-known/openid-configuration"
    assert _vs(issuers="http://idp.test/", discovery_urls=other).discovery == {
        "http://idp.test/": "http://idp.internal/.well-known/openid-configuration"
    }
    with pytest.raises(ConfigError, match="discovery_urls: not among the trusted issuers: http://idp.test/"):
        _vs(discovery_urls=other)
    for bad in ("http://idp.test/", "idp=http://x", "http://idp.test/=ftp://x"):
        with pytest.raises(ConfigError, match="is not ISSUER=URL"):
            _vs(issuers="http://idp.test/", discovery_urls=bad)


def test_token_issuers_default_to_the_configured_issuer() -> None:
    s = _vs()
    assert s.token_issuers == ("http://issuer.test",)  # only the configured issuer mints our tokens
    assert (s.token_expiry_claim, s.credential_claim) == ("token_exp", "token_cred")


def test_token_issuers_are_among_the_trusted_issuers() -> None:
    s = _vs(issuers="http://a,http://b", token_issuers="http://a,http://b")
    assert s.token_issuers == ("http://a", "http://b")
    with pytest.raises(ConfigError, match="not among the trusted issuers: http://a/"):
        _vs(issuers="http://a", token_issuers="http://a/")  # compared exactly, as issuers are
    # the default is the core issuer_url even where it is not trusted: never another issuer
    assert _vs(issuers="http://other").token_issuers == ("http://issuer.test",)
    with pytest.raises(ConfigError, match="token_issuers: not among the trusted issuers: http://c"):
        _vs(issuers="http://a", token_issuers="http://c")


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"algorithms": "RS256,HS256"}, "never none or HMAC"),
        ({"algorithms": ["none"]}, "never none or HMAC"),
        ({"policy_file": ""}, "policy_file: required"),
        ({"issuers": "ftp://x"}, "http(s) URL"),
        ({"max_staleness": "1s", "heartbeat_interval": "2s"}, "longer than heartbeat_interval"),
        ({"heartbeat_interval": "soon"}, "not a duration"),
        ({"workers": "two"}, "not a whole number"),
        ({"colour": "blue"}, "unknown validator setting"),
        ({"readiness_issuers": "http://issuer.test/"}, "readiness_issuers: name some of validator.issuers"),
        ({"readiness_issuers": "*,http://issuer.test"}, "readiness_issuers: name some of validator.issuers"),
        ({"request_timeout": "0s"}, "request_timeout: must be above zero"),
        ({"proxy_metrics_address": "9464"}, "proxy_metrics_address: host:port to listen on"),
        ({"proxy_metrics_address": ":9464"}, "proxy_metrics_address: host:port to listen on"),
        ({"proxy_metrics_address": "127.0.0.1:0"}, "proxy_metrics_address: host:port to listen on"),
        ({"proxy_metrics_address": "127.0.0.1:65536"}, "proxy_metrics_address: host:port to listen on"),
        ({"proxy_max_body_size": "-1"}, "proxy_max_body_size"),
        ({"proxy_upstream_ca_file": "/nonexistent/ca.pem"}, "proxy_upstream_ca_file: a readable PEM file"),
        ({"proxy_upstream_ca_file": __file__}, "proxy_upstream_ca_file: a readable PEM file"),  # no certificate
        ({"proxy_upstream_ca_file": "/"}, "proxy_upstream_ca_file: a readable PEM file"),  # a directory
    ],
)
def test_bad_settings_are_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _vs(**raw)


def test_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text(
        '[mltokens]\naudience = "a1"\n\n[validator]\npolicy_file = "x.yaml"\n'
        'heartbeat_interval = "500ms"\nissuers = ["http://a", "http://b/"]\n'
    )
    s = ValidatorSettings.load(config, env={"MLTOKENS_VALIDATOR_WORKERS": "3", "MLTOKENS_VALIDATOR_CACHE_SIZE": "0"})
    assert (s.audiences, s.heartbeat_interval, s.issuers) == (("a1",), 0.5, ("http://a", "http://b/"))
    assert (s.workers, s.cache_size) == (3, 0)
    flat = tmp_path / "flat.toml"
    flat.write_text('audience = "a1"\n[validator]\npolicy_file = "x.yaml"\n')
    with pytest.raises(ConfigError, match=r"under \[mltokens\]"):
        ValidatorSettings.load(flat, env={})


POLICY = {
    "anonymous": [{"path": "/healthz", "methods": ["GET"]}],
    "routes": [
        {"path": "/v1/models/{model}/predict", "methods": ["POST"], "roles": ["model:{model}:predict"]},
        {"path": "/v1/models/{model}/train", "methods": ["post"], "any_roles": ["model:{model}:train", "admin"]},
        {"path": "/v1/admin/**", "methods": ["*"], "scopes": ["model-admin"]},
    ],
}


def test_policy_matching() -> None:
    p = Policy.from_mapping(POLICY)
    m = p.match("POST", "/v1/models/vision/predict")
    assert m is not None and m.required() == (frozenset({"model:vision:predict"}), frozenset(), frozenset())
    m = p.match("POST", "/v1/models/vision/train")
    assert m is not None and m.required()[1] == frozenset({"model:vision:train", "admin"})
    assert p.match("GET", "/healthz").rule.anonymous  # type: ignore[union-attr]
    assert p.match("DELETE", "/v1/admin").required()[2] == frozenset({"model-admin"})  # type: ignore[union-attr]
    assert p.match("PUT", "/v1/admin/a/b").rule.pattern == "/v1/admin/**"  # type: ignore[union-attr]
    for method, path in [
        ("GET", "/v1/models/vision/predict"),
        ("POST", "/v1/models/a:b/predict"),
        ("POST", "/v1/models/a/b/predict"),
        ("POST", "/v1/models//predict"),
        ("HEAD", "/healthz"),
        ("GET", "/v1/adminx"),
        ("POST", "/"),
    ]:
        assert p.match(method, path) is None, (method, path)


def test_remembered_matches_are_bounded_and_equal_to_fresh_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "MEMO_ENTRIES", 3)
    p = Policy.from_mapping(POLICY)
    for i in range(10):
        path = f"/v1/models/m{i}/predict"
        assert p.match("POST", path) == p._first_match("POST", path)
        assert p.match("POST", path) is p.match("POST", path)  # the second answer is the remembered one
        assert len(p._memo) <= 3
    long_path = "/v1/admin/" + "a" * policy.MEMO_PATH_CHARS
    assert p.match("GET", long_path) is not None and ("GET", long_path) not in p._memo


@hsettings(max_examples=300, deadline=None)
@given(st.text(alphabet="/abc.%2e:~!$&'()*+,;=@ \\\x00é", max_size=24))
def test_paths_taken_as_they_are_would_decode_to_themselves(path: str) -> None:
    """canonical_path skips decoding only where decoding would change nothing and refuse nothing."""
    if contracts._PLAIN.fullmatch(path):
        assert decode_path(path) == path


@pytest.mark.parametrize(
    "data, message",
    [
        ({"routes": [{"path": "/x"}]}, "needs roles"),
        ({"routes": [{"path": "x", "roles": ["r"]}]}, "must start with /"),
        ({"routes": [{"path": "/a/*/b", "roles": ["r"]}]}, "only {name}"),
        ({"routes": [{"path": "/a", "roles": ["{model}"]}]}, "not in the path"),
        ({"routes": [{"path": "/a", "roles": ["r"], "methods": ["FETCH"]}]}, "unknown method"),
        ({"anonymous": [{"path": "/a", "roles": ["r"]}]}, "unexpected key"),
        ({"rules": []}, "mapping with"),
        ([], "mapping with"),
    ],
)
def test_policy_mistakes_are_refused(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}").replace("*", r"\*")):
        Policy.from_mapping(data)


@hsettings(max_examples=300, deadline=None)
@given(st.text(alphabet="/abc.%2e:{}_-", max_size=40), st.sampled_from(["GET", "POST", "PUT"]))
def test_policy_matcher_fuzz_never_crashes_and_binds_safe_segments(path: str, method: str) -> None:
    match = Policy.from_mapping(POLICY).match(method, path)
    if match is not None:
        assert all(v and all(c.isalnum() or c in "._-" for c in v) for v in match.params.values())


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("/v1/models/sentiment/predict?x=1", "/v1/models/sentiment/predict"),
        ("/v1/models/%73entiment/predict", "/v1/models/sentiment/predict"),
        ("/", "/"),
        ("/a/", "/a/"),
    ],
)
def test_canonical_paths(raw: str, expected: str) -> None:
    assert canonical_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["/a/../b", "/a/./b", "/a//b", "/a/%2e%2e/b", "/a%2Fb", "/a\\b", "/a%00", "/a%252e", "relative", "/a/%ff", "/a/.."],
)
def test_non_canonical_paths_are_refused(raw: str) -> None:
    with pytest.raises(ContractError):
        canonical_path(raw)


def test_contracts() -> None:
    headers = {
        "x-original-method": "post",
        "x-original-uri": "/v1/m?q",
        "x-forwarded-method": "GET",
        "x-forwarded-uri": "/healthz",
    }
    assert original_request("/auth/nginx", "GET", headers.get) == Original("POST", "/v1/m")
    assert original_request("/auth/forward", "GET", headers.get) == Original("GET", "/healthz")
    assert original_request("/auth/envoy/v1/x", "PUT", {}.get) == Original("PUT", "/v1/x")
    assert original_request("/auth/envoy", "GET", {}.get) == Original("GET", "/")
    assert original_request("/auth/envoyx", "GET", {}.get) is None
    assert original_request("/other", "GET", headers.get) is None
    with pytest.raises(ContractError, match="missing_original_request"):
        original_request("/auth/nginx", "GET", {"x-original-uri": "/a"}.get)


def test_remembered_original_requests_are_bounded_and_refusals_are_never_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(contracts, "_MEMO", {})
    monkeypatch.setattr(contracts, "MEMO_ENTRIES", 3)
    for i in range(10):
        uri = f"/v1/models/m{i}/predict"
        first = original_request("/auth/envoy" + uri, "post", {}.get)
        assert first == Original("POST", uri) and original_request("/auth/envoy" + uri, "post", {}.get) is first
        assert len(contracts._MEMO) <= 3
    for _ in range(2):  # a refused path raises every time
        with pytest.raises(ContractError, match="bad_path"):
            original_request("/auth/envoy/v1/a/../b", "GET", {}.get)
    long_uri = "/v1/" + "a" * contracts.MEMO_URI_CHARS
    assert original_request("/auth/envoy" + long_uri, "GET", {}.get) == Original("GET", long_uri)
    assert ("GET", long_uri) not in contracts._MEMO


@pytest.mark.parametrize(
    "value, address",
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:9464", ("::1", 9464)), ("0.0.0.0:1", ("0.0.0.0", 1))],
)
def test_a_metrics_address_is_a_host_and_a_port(value: str, address: tuple[str, int]) -> None:
    assert _vs(proxy_metrics_address=value).proxy_metrics_address == value
    assert listen_address(value) == address
