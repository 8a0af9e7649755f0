"""Settings from a TOML file and `MLTOKENS_*` environment variables.

The file is named by `--config` or `MLTOKENS_CONFIG`; environment variables override
the file. Every setting has a default except where a safe default does not exist
(the key passphrase of the local issuer).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "MLTOKENS_"
# The JWS algorithms any token may be signed with, for the validator (its `algorithms` setting
# chooses among these) and `mltokens check` alike: RSA, RSA-PSS, ECDSA; never none or HMAC.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
CONFIG_VARIABLE = ENV_PREFIX + "CONFIG"
# Under MLTOKENS_, beside the settings: the file's name, and prefixes the product never reads,
# kept for the test suite (MLTOKENS_TEST_*) and the demo launcher (MLTOKENS_DEMO_*).
TOOL_PREFIXES = (ENV_PREFIX + "TEST_", ENV_PREFIX + "DEMO_")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|[smhdw])?\s*$")
_UNITS = {None: 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = timedelta(days=36500)
"""No duration anywhere (a setting, a token's lifetime) may be longer: 100 years."""


class DurationTooLong(ConfigError):
    """A well-formed duration beyond MAX_DURATION (or beyond what a float holds)."""

    code = "duration_too_long"


def parse_duration(value: Any, name: str = "duration") -> timedelta:
    """`90d`, `12h`, `30m`, `45s`, `500ms`, `2w`, `1.5h` or a number of seconds, at most MAX_DURATION."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float
            seconds = math.inf if value > 0 else -math.inf
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(f"{name}: {str(value)[:40]!r} is not a duration (e.g. 90d, 12h, 30m, 45s, 500ms)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if math.isnan(seconds):
        raise ConfigError(f"{name}: not a number")
    if seconds < 0:
        raise ConfigError(f"{name}: must not be negative")
    if seconds > MAX_DURATION.total_seconds():
        raise DurationTooLong(f"{name}: at most {MAX_DURATION.days}d (100 years)")
    return value if isinstance(value, timedelta) else timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """A duration as a user writes it (`30d`, `12h`, `500ms`); parse_duration reads it back."""
    ms = value / timedelta(milliseconds=1)
    if ms == 0:
        return "0s"
    for unit in ("d", "h", "m", "s", "ms"):
        size = _UNITS[unit] * 1000
        if ms % size == 0:
            return f"{int(ms // size)}{unit}"
    return f"{value.total_seconds():.6f}".rstrip("0") + "s"  # microseconds, the finest a timedelta holds


def check_environment(env: Mapping[str, str]) -> None:
    """Refuse a `MLTOKENS_*` variable that names no setting: a typo must not be ignored silently."""
    from .validator.settings import environment_names  # the validator's settings (imports this module)

    known = {CONFIG_VARIABLE, *(ENV_PREFIX + f.name.upper() for f in fields(Settings)), *environment_names()}
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known and not name.startswith(TOOL_PREFIXES):
            suffixes = {k[len(ENV_PREFIX):]: k for k in known}
            nearest = difflib.get_close_matches(name[len(ENV_PREFIX):], suffixes, n=1, cutoff=0.6)
            hint = f"; did you mean {suffixes[nearest[0]]}?" if nearest else "; `mltokens config` lists the settings"
            raise ConfigError(f"unknown environment variable {name}{hint}")


def parse_int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a whole number") from None


def parse_list(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        raise ConfigError(f"{name}: expected a list or a comma-separated string")
    return tuple(v for v in items if v)


_PARSERS = {timedelta: parse_duration, int: parse_int, "list": parse_list, str: lambda v, n: str(v)}


def _setting(default: Any, doc: str, kind: Any = None, secret: bool = False) -> Any:
    meta = {"doc": doc, "kind": kind, "secret": secret}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta | {"kind": "list"})
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    database_url: str = _setting(
        "postgresql://postgres@127.0.0.1:5432/mltokens", "SQLAlchemy URL of the token store (PostgreSQL)."
    )
    issuer: str = _setting("local", "Issuer kind: `local` (embedded default) or `keycloak`.")
    issuer_url: str = _setting(
        "http://127.0.0.1:8901",
        "The `iss` of tokens. For the local issuer, the base URL where `mltokens issuer serve` publishes "
        "/.well-known/openid-configuration and the JWKS.",
    )
    audience: str = _setting("model-api", "The `aud` of every token: the model API audience.")
    default_ttl: timedelta = _setting(timedelta(days=30), "Lifetime of a token when none is asked for.", timedelta)
    max_ttl: timedelta = _setting(timedelta(days=90), "Longest lifetime a token may be given.", timedelta)
    max_tokens_per_owner: int = _setting(20, "Most active tokens one owner may hold.", int)
    max_creations_per_hour: int = _setting(
        30, "Most tokens one owner may create in an hour (brute-force and runaway-script protection).", int
    )
    max_token_rate_limit: int = _setting(
        50, "Highest per-token rate limit (requests per second) a user may set on a token.", int
    )
    max_token_daily_quota: int = _setting(
        1_000_000, "Highest per-token daily quota (requests per day) a user may set on a token.", int
    )
    renew_grace: timedelta = _setting(
        timedelta(0), "How long the old token keeps working after a renewal (0 = revoked at once).", timedelta
    )
    retention: timedelta = _setting(
        timedelta(days=30), "How long revoked or expired tokens stay listed before `prune` removes them.", timedelta
    )
    audit_retention: timedelta = _setting(timedelta(days=365), "How long audit events are kept.", timedelta)
    grantable_roles: tuple[str, ...] = _setting(
        ("model:sentiment:predict", "model:sentiment:train", "model:vision:predict", "model:vision:train"),
        "Local issuer: roles any user may put on a token (comma-separated in the environment).",
    )
    key_passphrase: str = _setting(
        "",
        "Local issuer: passphrase that encrypts the private signing keys at rest. Required to sign or rotate.",
        secret=True,
    )
    signing_algorithm: str = _setting("RS256", "Local issuer: JWS algorithm (RS256, RS384, RS512 or PS256).")
    leeway: timedelta = _setting(timedelta(seconds=30), "Clock skew allowed on `exp`, `nbf` and `iat`.", timedelta)
    owner_claim: str = _setting("owner", "Claim naming the owner's user id.")
    owner_name_claim: str = _setting("owner_name", "Claim naming the owner's user name.")
    token_id_claim: str = _setting("token_id", "Claim carrying the token id (stable across renewals).")
    token_expiry_claim: str = _setting(
        "token_exp",
        "Claim carrying the ML token's expiry (epoch seconds) in every JWT fetched with a client-credentials "
        "token's id and secret; the validator refuses such a JWT after it, whatever its own `exp` says.",
    )
    credential_claim: str = _setting(
        "token_cred",
        "Claim naming the credential (client secret) a client-credentials JWT was fetched with; a renewal "
        "revokes the old credential's JWTs by it.",
    )
    limits_claim: str = _setting(
        "limits",
        "Claim carrying a token's own limits, e.g. {\"rps\": 5, \"daily\": 10000} (absent = route limits only).",
    )
    roles_claim: str = _setting(
        "roles", "Claim listing the granted roles (Keycloak's realm_access.roles is also read)."
    )
    keycloak_server_url: str = _setting("", "Keycloak issuer: base URL of Keycloak (e.g. https://keycloak.example.org).")
    keycloak_realm: str = _setting(
        "mltokens", "Keycloak issuer: realm holding one client per ML token (its SSO Session Max must fit max_ttl)."
    )
    keycloak_users_realm: str = _setting(
        "", "Keycloak issuer: realm of the human users whose roles bound what they may grant (default: keycloak_realm)."
    )
    keycloak_admin_client_id: str = _setting(
        "mltokens-admin", "Keycloak issuer: service-account client in keycloak_realm that manages token clients."
    )
    keycloak_admin_client_secret: str = _setting("", "Keycloak issuer: that client's secret.", secret=True)
    keycloak_admin_username: str = _setting(
        "", "Keycloak issuer: log in as this admin user instead of the service-account client."
    )
    keycloak_admin_password: str = _setting("", "Keycloak issuer: the admin user's password.", secret=True)
    keycloak_admin_realm: str = _setting("master", "Keycloak issuer: realm the admin user logs in to.")
    keycloak_role_prefix: str = _setting("model:", "Keycloak issuer: only roles with this prefix may go on tokens.")
    keycloak_client_prefix: str = _setting("mlt-", "Keycloak issuer: clientId prefix of token clients.")
    keycloak_timeout: timedelta = _setting(timedelta(seconds=10), "Keycloak issuer: timeout of every call.", timedelta)
    client_credentials_lifespan: timedelta = _setting(
        timedelta(minutes=15),
        "Keycloak issuer: lifespan of each access token fetched with a client-credentials token's id and secret "
        "(the client's `access.token.lifespan`; at most the token's lifetime, and never valid past its expiry).",
        timedelta,
    )

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        check_environment(env)
        raw: dict[str, Any] = {}
        path = path or env.get(CONFIG_VARIABLE)
        if path:
            raw.update(_read_file(Path(path)))
        for f in fields(cls):
            key = ENV_PREFIX + f.name.upper()
            if key in env:
                raw[f.name] = env[key]
        return cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Settings:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            kind = known[name].metadata["kind"] or str
            values[name] = _PARSERS[kind](value, name)
        settings = cls(**values)
        settings.check()
        return settings

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        if self.issuer not in ("local", "keycloak"):
            raise ConfigError(f"issuer: {self.issuer!r} is not one of: local, keycloak")
        if not self.database_url.startswith("postgresql"):
            raise ConfigError("database_url: must be a PostgreSQL URL (postgresql://user@host:port/db)")
        if not self.issuer_url.startswith(("http://", "https://")):
            raise ConfigError("issuer_url: must be an http(s) URL")
        if self.max_ttl <= timedelta(0):
            raise ConfigError("max_ttl: must be positive")
        if not timedelta(0) < self.default_ttl <= self.max_ttl:
            raise ConfigError("default_ttl: must be positive and not above max_ttl")
        if self.max_creations_per_hour < 1:
            raise ConfigError("max_creations_per_hour: must be at least 1")
        if not timedelta(seconds=1) <= self.client_credentials_lifespan <= self.max_ttl:
            raise ConfigError("client_credentials_lifespan: must be at least 1s and not above max_ttl")
        if self.max_tokens_per_owner < 1:
            raise ConfigError("max_tokens_per_owner: must be at least 1")
        if self.issuer == "keycloak":
            if not self.keycloak_server_url.startswith(("http://", "https://")):
                raise ConfigError("keycloak_server_url: required (an http(s) URL) when issuer = keycloak")
            as_user = self.keycloak_admin_username and self.keycloak_admin_password
            if not (self.keycloak_admin_client_secret or as_user):
                raise ConfigError(
                    "keycloak_admin_client_secret (or keycloak_admin_username and keycloak_admin_password): "
                    "required when issuer = keycloak"
                )
        if self.signing_algorithm not in ("RS256", "RS384", "RS512", "PS256"):
            raise ConfigError("signing_algorithm: must be one of RS256, RS384, RS512, PS256")

    def describe(self) -> list[tuple[str, str, str]]:
        """(environment variable, current value, doc) for each setting; secrets masked."""
        rows = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown = "***" if f.metadata["secret"] and value else _show(value)
            rows.append((ENV_PREFIX + f.name.upper(), shown, f.metadata["doc"]))
        return rows


def _show(value: Any) -> str:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    if "mltokens" in data:
        return data["mltokens"]
    # Top-level keys are ours; other tables ([validator], …) belong to other parts.
    return {k: v for k, v in data.items() if not isinstance(v, dict)}
