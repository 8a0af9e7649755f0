"""The validator's settings: section `[validator]` of the TOML file, `MLTOKENS_VALIDATOR_*` env.

Defaults for the issuer, audience, leeway, database and claim names come from the core
settings (`[mltokens]` section, `MLTOKENS_*`), so one file configures both. Durations
accept `500ms`, `2s`, `5m` or a number of seconds (fractions allowed).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..config import ALGORITHMS, Settings, parse_duration, parse_int, parse_list
from ..errors import ConfigError

ENV_PREFIX = "MLTOKENS_VALIDATOR_"


def seconds(value: Any, name: str) -> float:
    """A duration in seconds from `500ms`, `2s`, `5m`, `1h` or a plain number."""
    return parse_duration(value, f"validator.{name}").total_seconds()


def _strings(value: Any, name: str) -> tuple[str, ...]:
    return parse_list(value, f"validator.{name}")


def _int(value: Any, name: str) -> int:
    return parse_int(value, f"validator.{name}")


@dataclass(frozen=True)
class ValidatorSettings:
    """Everything `mltokens serve` needs; see docs/validator.md for each field."""

    issuers: tuple[str, ...]
    audiences: tuple[str, ...]
    database_url: str
    policy_file: str
    leeway: float
    owner_claim: str
    owner_name_claim: str
    token_id_claim: str
    roles_claim: str
    limits_claim: str
    token_expiry_claim: str
    credential_claim: str
    #: The issuers that mint mltokens tokens: only their tokens' token id, owner, expiry
    #: and credential claims mean ours (docs/validator.md, "Tokens of other issuers").
    token_issuers: tuple[str, ...]
    algorithms: tuple[str, ...] = ALGORITHMS
    host: str = "127.0.0.1"
    port: int = 8902
    workers: int = 1
    grpc_port: int = 0  # Envoy ext_authz over gRPC on `host`:grpc_port (needs the `grpc` extra); 0 = off
    max_staleness: float = 10.0
    heartbeat_interval: float = 1.0
    resync_interval: float = 300.0
    jwks_refresh_interval: float = 300.0
    jwks_min_refetch_interval: float = 30.0
    jwks_timeout: float = 5.0
    usage_flush_interval: float = 30.0
    cache_size: int = 10000
    max_token_bytes: int = 8192
    request_timeout: float = 10.0  # lean server: a request must fully arrive within this of its first byte
    # Issuers whose keys /readyz waits for: some of `issuers`, or "*" for all; empty: the first issuer.
    readiness_issuers: tuple[str, ...] = ()
    redis_url: str = ""
    redis_key_prefix: str = "mltokens:rl:"
    redis_timeout: float = 0.25
    redis_retry_interval: float = 1.0

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
             ) -> ValidatorSettings:
        """Core settings for defaults, then `[validator]` from the file, then the environment."""
        env = os.environ if env is None else env
        path = path or env.get("MLTOKENS_CONFIG")
        raw: dict[str, Any] = {}
        if path:
            data = _read(Path(path))
            raw.update(data.get("validator", {}))
            if "validator" in data and "mltokens" not in data:
                raise ConfigError("with a [validator] section, put the core settings under [mltokens]")
        core = Settings.load(path, env)
        for f in fields(cls):
            key = ENV_PREFIX + f.name.upper()
            if key in env:
                raw[f.name] = env[key]
        return cls.from_mapping(raw, core)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], core: Settings) -> ValidatorSettings:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ConfigError(f"unknown validator setting(s): {', '.join(unknown)}")
        values: dict[str, Any] = {
            # The local issuer names itself by issuer_url without a trailing slash; others as written.
            "issuers": (core.issuer_url.rstrip("/") if core.issuer == "local" else core.issuer_url,),
            "audiences": (core.audience,),
            "database_url": core.database_url,
            "policy_file": "",
            "leeway": core.leeway.total_seconds(),
            "owner_claim": core.owner_claim,
            "owner_name_claim": core.owner_name_claim,
            "token_id_claim": core.token_id_claim,
            "roles_claim": core.roles_claim,
            "limits_claim": core.limits_claim,
            "token_expiry_claim": core.token_expiry_claim,
            "credential_claim": core.credential_claim,
            "token_issuers": (core.issuer_url.rstrip("/") if core.issuer == "local" else core.issuer_url,),
        }
        for name, value in raw.items():
            default = known[name].default
            kind = type(values[name]) if default is dataclasses.MISSING else type(default)
            if kind is tuple:
                values[name] = _strings(value, name)
            elif kind is float:
                values[name] = seconds(value, name)
            elif kind is int:
                values[name] = _int(value, name)
            else:
                values[name] = str(value)
        if "token_issuers" in raw:
            stray = sorted(set(values["token_issuers"]) - set(values["issuers"]))
            if stray:
                raise ConfigError(f"validator.token_issuers: not among the trusted issuers: {', '.join(stray)}")
        settings = cls(**values)
        settings.check()
        return settings

    @property
    def required_issuers(self) -> tuple[str, ...]:
        """The issuers whose keys must be loaded for the worker to be ready."""
        if self.readiness_issuers == ("*",):
            return self.issuers
        return self.readiness_issuers or self.issuers[:1]

    def check(self) -> None:
        if not self.issuers:
            raise ConfigError("validator.issuers: name at least one issuer URL")
        if not all(i.startswith(("http://", "https://")) for i in self.issuers):
            raise ConfigError("validator.issuers: every issuer must be an http(s) URL")
        if not self.audiences:
            raise ConfigError("validator.audiences: name at least one audience")
        bad = sorted(set(self.algorithms) - set(ALGORITHMS))
        if bad or not self.algorithms:
            raise ConfigError(f"validator.algorithms: choose from {', '.join(ALGORITHMS)}"
                              f" (never none or HMAC); not allowed: {', '.join(bad) or '(empty)'}")
        if not self.policy_file:
            raise ConfigError("validator.policy_file: required (the route policy YAML file)")
        if not 0 <= self.grpc_port <= 65535:
            raise ConfigError("validator.grpc_port: a TCP port (1-65535), or 0 for no gRPC server")
        if self.grpc_port and self.grpc_port == self.port:
            raise ConfigError("validator.grpc_port: must differ from port")
        if self.grpc_port and not _grpc_installed():
            raise ConfigError("validator.grpc_port: the gRPC server needs the grpc extra (pip install .[grpc])")
        if self.workers < 1:
            raise ConfigError("validator.workers: must be at least 1")
        if self.max_staleness <= self.heartbeat_interval:
            raise ConfigError("validator.max_staleness: must be longer than heartbeat_interval")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("validator.redis_url: a redis://, rediss:// or unix:// URL")
        if self.redis_url and self.redis_timeout <= 0:
            raise ConfigError("validator.redis_timeout: must be above zero")
        if self.readiness_issuers != ("*",) and not set(self.readiness_issuers) <= set(self.issuers):
            raise ConfigError("validator.readiness_issuers: name some of validator.issuers (exactly as written),"
                              " or * for all of them")
        if self.request_timeout <= 0:
            raise ConfigError("validator.request_timeout: must be above zero")
        if self.max_token_bytes < 512:
            raise ConfigError("validator.max_token_bytes: must be at least 512")


def environment_names() -> set[str]:
    """The environment variables of the validator's settings."""
    return {ENV_PREFIX + f.name.upper() for f in fields(ValidatorSettings)}


def _grpc_installed() -> bool:
    """True when grpcio and xds-protos are installed; found without importing grpc."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("grpc", "envoy.service.auth.v3"))
    except ModuleNotFoundError:  # no `envoy` package at all
        return False


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
