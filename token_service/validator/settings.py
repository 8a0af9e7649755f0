"""The validator's settings: section `[validator]` of the TOML file, `MLTOKENS_VALIDATOR_*` env.

Defaults for the issuer, audience, leeway, database and claim names come from the core
settings (`[mltokens]` section, `MLTOKENS_*`), so one file configures both. Durations
accept `500ms`, `2s`, `5m` or a number of seconds (fractions allowed).
"""

from __future__ import annotations

import importlib.util
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import ALGORITHMS, Settings
from ..errors import ConfigError
from ..settings_schema import PART_PREFIXES, Section, above_zero, at_least, setting
from ..token_format import check_prefix

ENV_PREFIX = PART_PREFIXES["validator"]


def _issuer_urls(value: tuple[str, ...]) -> str | None:
    if not value:
        return "name at least one issuer URL"
    if not all(i.startswith(("http://", "https://")) for i in value):
        return "every issuer must be an http(s) URL"
    return None


def _discovery_urls(value: tuple[str, ...]) -> str | None:
    for pair in value:
        issuer, _, url = pair.partition("=")
        if not (issuer.startswith(("http://", "https://")) and url.startswith(("http://", "https://"))):
            return f"{pair[:80]!r} is not ISSUER=URL (both http(s) URLs)"
    return None


def _algorithms(value: tuple[str, ...]) -> str | None:
    bad = sorted(set(value) - set(ALGORITHMS))
    if bad or not value:
        return f"choose from {', '.join(ALGORITHMS)} (never none or HMAC); not allowed: {', '.join(bad) or '(empty)'}"
    return None


def _grpc_port(value: int) -> str | None:
    if not 0 <= value <= 65535:
        return "a TCP port (1-65535), or 0 for no gRPC server"
    if value and not _grpc_installed():
        return "the gRPC server needs the grpc extra (pip install .[grpc])"
    return None


def _redis_url(value: str) -> str | None:
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        return "a redis://, rediss:// or unix:// URL"
    return None


def listen_address(value: str) -> tuple[str, int]:
    """`host:port` (`[::1]:9464` for IPv6) as a host and a port; ValueError when it is not one."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(value)
    return host, int(port)


def _listen_address(value: str) -> str | None:
    try:
        if value:
            listen_address(value)
    except ValueError:
        return "host:port to listen on, e.g. 127.0.0.1:9464 or [::1]:9464 (empty: off)"
    return None


def _ca_file(value: str) -> str | None:
    """A PEM file of certificate authorities that `ssl` can load (empty: the system's)."""
    if not value:
        return None
    try:
        ssl.create_default_context(cafile=value)
    except (OSError, ValueError):  # missing or unreadable (ssl.SSLError is an OSError), or no certificate
        return "a readable PEM file of certificate authorities"
    return None


def _core_defaults(core: Settings) -> dict[str, Any]:
    """The settings without a default of their own take the core's."""
    from .jwks import discovery_url  # not at the top: `mltokens --help` would load cryptography

    # The local issuer names itself by issuer_url without a trailing slash; others as written.
    issuer = core.issuer_url.rstrip("/") if core.issuer == "local" else core.issuer_url
    # Keycloak with a public `hostname`: its `iss` is the public URL, its keys are read where mltokens calls it.
    backchannel = core.issuer == "keycloak" and core.keycloak_server_url and issuer != core.keycloak_realm_url
    return {
        "issuers": (issuer,),
        "discovery_urls": (f"{issuer}={discovery_url(core.keycloak_realm_url)}",) if backchannel else (),
        "audiences": (core.audience,),
        "database_url": core.database_url,
        "policy_file": "",
        "leeway": core.leeway.total_seconds(),
        "owner_claim": core.owner_claim,
        "owner_name_claim": core.owner_name_claim,
        "owner_kind_claim": core.owner_kind_claim,
        "token_id_claim": core.token_id_claim,
        "roles_claim": core.roles_claim,
        "limits_claim": core.limits_claim,
        "token_expiry_claim": core.token_expiry_claim,
        "credential_claim": core.credential_claim,
        "token_issuers": (issuer,),
        "token_prefix": core.token_prefix,
    }


@dataclass(frozen=True)
class ValidatorSettings(Section, env_prefix=ENV_PREFIX, table="validator"):
    """Everything `mltokens serve` needs; docs/validator.md explains how each is used."""

    issuers: tuple[str, ...] = setting(
        doc="Trusted issuer URLs, compared exactly as written (default: the core `issuer_url`; "
        "comma-separated in the environment).",
        check=_issuer_urls,
    )
    discovery_urls: tuple[str, ...] = setting(
        doc="Where to read a trusted issuer's OpenID discovery document instead of `{issuer}/.well-known/"
        "openid-configuration`: `ISSUER=URL` pairs (comma-separated in the environment), e.g. Keycloak's "
        "back-channel URL inside the cluster when `iss` is its public URL. The document must still name the "
        "issuer exactly; its `jwks_uri` is where the keys are fetched (default: with the core issuer = keycloak and "
        "an `issuer_url` other than `{keycloak_server_url}/realms/{keycloak_realm}`, that realm's document at "
        "keycloak_server_url; else none).",
        check=_discovery_urls,
    )
    audiences: tuple[str, ...] = setting(
        doc="Accepted `aud` values (default: the core `audience`).",
        check=lambda value: None if value else "name at least one audience",
    )
    database_url: str = setting(
        doc="PostgreSQL of the revocations and usage counters; use the least-privilege role of docs/validator.md "
        "(default: the core `database_url`)."
    )
    policy_file: str = setting(
        doc="The route policy YAML file (required).",
        check=lambda value: None if value else "required (the route policy YAML file)",
    )
    leeway: float = setting(doc="Clock skew allowed on `exp`, `nbf` and `iat` (default: the core `leeway`).")
    owner_claim: str = setting(doc="Claim naming the owner's user id (default: the core setting).")
    owner_name_claim: str = setting(doc="Claim naming the owner's user name (default: the core setting).")
    owner_kind_claim: str = setting(
        doc="Claim naming the owner's kind, `user` or `organization` (default: the core setting)."
    )
    token_id_claim: str = setting(doc="Claim carrying the token id (default: the core setting).")
    roles_claim: str = setting(doc="Claim listing the granted roles (default: the core setting).")
    limits_claim: str = setting(doc="Claim carrying a token's own limits (default: the core setting).")
    token_expiry_claim: str = setting(
        doc="Claim carrying the ML token's expiry in client-credentials JWTs (default: the core setting)."
    )
    credential_claim: str = setting(
        doc="Claim naming the credential a client-credentials JWT was fetched with (default: the core setting)."
    )
    token_issuers: tuple[str, ...] = setting(
        doc="The issuers that mint mltokens tokens, some of `issuers`: only their tokens' token id, owner, expiry "
        'and credential claims mean ours (default: the core `issuer_url`; docs/validator.md, "Tokens of other '
        'issuers").'
    )
    token_prefix: str = setting(
        doc="The prefix of handed-out tokens, taken off before the JWT is read (default: the core setting).",
        check=check_prefix,
    )
    unprefixed_tokens: str = setting(
        "accept",
        "`accept` or `refuse` the `token_issuers`' tokens handed out without `token_prefix` (those issued before "
        "the prefix existed); JWTs fetched with a client-credentials token's id and secret, and other issuers' "
        'tokens, are always accepted without it (docs/security.md, "Recognisable tokens").',
        check=lambda value: None if value in ("accept", "refuse") else "accept or refuse",
    )
    algorithms: tuple[str, ...] = setting(
        ALGORITHMS,
        "Allowed JWS algorithms, some of the default list (`ALGORITHMS` in token_service/config.py, "
        "which `mltokens check` accepts too); never none or HMAC.",
        check=_algorithms,
    )
    host: str = setting("127.0.0.1", "Listening address.")
    port: int = setting(8902, "HTTP listening port.")
    workers: int = setting(1, "Worker processes.", check=at_least(1))
    grpc_port: int = setting(
        0, "Envoy ext_authz over gRPC on `host`:grpc_port (needs the `grpc` extra); 0 = off.", check=_grpc_port
    )
    max_staleness: float = setting(10.0, "Revocation data older than this: every decision is 503 (fail closed).")
    heartbeat_interval: float = setting(1.0, "Liveness query on the LISTEN connection, this often.")
    resync_interval: float = setting(300.0, "Full reload of the revocation set, this often.")
    jwks_refresh_interval: float = setting(300.0, "Background refresh of the issuers' keys, this often.")
    jwks_min_refetch_interval: float = setting(
        30.0, "At most one refetch per issuer for an unknown `kid` in this interval."
    )
    jwks_timeout: float = setting(5.0, "Timeout of a discovery or JWKS fetch.")
    usage_flush_interval: float = setting(30.0, "Usage counters are written to the database this often.")
    cache_size: int = setting(10000, "Verified tokens cached per worker (0 = no cache).")
    max_token_bytes: int = setting(8192, "Longer bearer tokens are refused.", check=at_least(512))
    request_timeout: float = setting(
        10.0,
        "Lean server: a request must have fully arrived this long after its first byte (one fixed deadline "
        "per request, so trickling clients are dropped).",
        check=above_zero,
    )
    readiness_issuers: tuple[str, ...] = setting(
        (), "Issuers whose keys /readyz waits for: some of `issuers`, or * for all (empty: the first issuer)."
    )
    redis_url: str = setting(
        "",
        "Redis that counts rate limits and quotas across workers and replicas (empty: each worker counts "
        "alone; docs/rate-limits.md).",
        check=_redis_url,
    )
    redis_key_prefix: str = setting("mltokens:rl:", "Prefix of the validator's Redis keys.")
    redis_timeout: float = setting(0.25, "Timeout of a Redis call; past it the worker counts locally for a while.")
    redis_retry_interval: float = setting(1.0, "After a Redis failure, count locally this long before trying again.")
    introspection_client_id: str = setting(
        "gateway", "RFC 7662 `POST /introspect`: the client id the caller authenticates with (HTTP Basic)."
    )
    introspection_secret: str = setting(
        "",
        "RFC 7662 `POST /introspect`: the caller's secret (HTTP Basic with `introspection_client_id`, or "
        "`Authorization: Bearer <secret>`), at least 16 characters; empty: no introspection endpoint (404).",
        secret=True,
        check=lambda value: None if not value or len(value) >= 16 else "at least 16 characters (or empty: off)",
    )
    upstream: str = setting(
        "",
        "`mltokens proxy`: the model API every allowed request is forwarded to (`--upstream` overrides).",
        check=lambda value: None if not value or value.startswith(("http://", "https://")) else "an http(s) URL",
    )
    proxy_upstream_ca_file: str = setting(
        "",
        "`mltokens proxy`: a PEM file of the certificate authorities an `https://` upstream's certificate must "
        "chain to, instead of the system's trust store (a model API with a private CA); the certificate and "
        "its host name are always verified.",
        check=_ca_file,
    )
    proxy_port: int = setting(8904, "`mltokens proxy`: listening port (on `host`).")
    proxy_connect_timeout: float = setting(
        5.0, "`mltokens proxy`: timeout of a connection to the upstream.", check=above_zero
    )
    proxy_first_byte_timeout: float = setting(
        300.0,
        "`mltokens proxy`: the upstream must start its answer this long after the request was sent whole "
        "(a model's time to first token); past it, 504.",
        check=above_zero,
    )
    proxy_idle_timeout: float = setting(
        120.0,
        "`mltokens proxy`: a request or response body that moves no byte this long is cut (a stalled client or "
        "upstream).",
        check=above_zero,
    )
    proxy_pool_size: int = setting(
        100, "`mltokens proxy`: keep-alive connections to the upstream, at most (0 = no limit).", check=at_least(0)
    )
    proxy_max_body_size: int = setting(
        0,
        "`mltokens proxy`: a request body larger than this many bytes is refused with 413 (0, the default: no "
        "limit; training uploads may be many GB, and a streamed body costs the proxy no memory).",
        check=at_least(0),
    )
    proxy_metrics_address: str = setting(
        "",
        "`mltokens proxy`: host:port of a separate listener for Prometheus `/metrics`, e.g. 127.0.0.1:9464 "
        "(empty: no metrics; never on the proxy's own port, which faces clients).",
        check=_listen_address,
    )

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
    ) -> ValidatorSettings:
        """Core settings for defaults, then `[validator]` from the file, then the environment."""
        env = os.environ if env is None else env
        raw = cls.read(path, env)
        return cls.from_mapping(raw, Settings.load(path, env))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], core: Settings) -> ValidatorSettings:
        values = _core_defaults(core) | cls.parse(raw)
        if "token_issuers" in raw:  # the default may name an issuer not trusted: then no token is ours
            stray = sorted(set(values["token_issuers"]) - set(values["issuers"]))
            if stray:
                raise ConfigError(f"validator.token_issuers: not among the trusted issuers: {', '.join(stray)}")
        settings = cls(**values)
        settings.check()
        stray = sorted(set(settings.discovery) - set(settings.issuers))
        if "discovery_urls" in raw and stray:  # the default names the core issuer, trusted or not
            raise ConfigError(f"validator.discovery_urls: not among the trusted issuers: {', '.join(stray)}")
        return settings

    @property
    def discovery(self) -> dict[str, str]:
        """Issuer -> where its discovery document is read, for those with a `discovery_urls` entry."""
        return dict(pair.partition("=")[::2] for pair in self.discovery_urls)

    @property
    def required_issuers(self) -> tuple[str, ...]:
        """The issuers whose keys must be loaded for the worker to be ready."""
        if self.readiness_issuers == ("*",):
            return self.issuers
        return self.readiness_issuers or self.issuers[:1]

    def check(self) -> None:
        """Each setting's own check, then those that relate settings to each other."""
        self.check_each()
        if self.grpc_port and self.grpc_port == self.port:
            raise ConfigError("validator.grpc_port: must differ from port")
        if self.max_staleness <= self.heartbeat_interval:
            raise ConfigError("validator.max_staleness: must be longer than heartbeat_interval")
        if self.redis_url and self.redis_timeout <= 0:
            raise ConfigError("validator.redis_timeout: must be above zero")
        if self.readiness_issuers != ("*",) and not set(self.readiness_issuers) <= set(self.issuers):
            raise ConfigError(
                "validator.readiness_issuers: name some of validator.issuers (exactly as written), or * for all of them"
            )


def _grpc_installed() -> bool:
    """True when grpcio and xds-protos are installed; found without importing grpc."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("grpc", "envoy.service.auth.v3"))
    except ModuleNotFoundError:  # no `envoy` package at all
        return False
