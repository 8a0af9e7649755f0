"""The core settings: from a TOML file and `MLTOKENS_*` environment variables.

The file is named by `--config` or `MLTOKENS_CONFIG`; environment variables override
the file. Every setting has a default except where a safe default does not exist
(the key passphrase of the local issuer). How settings are declared and read is
token_service.settings_schema, which the validator's settings share.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .errors import ConfigError
from .settings_schema import (
    ENV_PREFIX,
    MAX_DURATION,
    DurationTooLong,
    Section,
    at_least,
    format_duration,
    http_url,
    parse_duration,
    setting,
)
from .token_format import DEFAULT_PREFIX, check_prefix

__all__ = [
    "ALGORITHMS",
    "CKAN_OPTION_PREFIX",
    "ENV_PREFIX",
    "MAX_DURATION",
    "DurationTooLong",
    "Settings",
    "SIGNING_ALGORITHMS",
    "format_duration",
    "parse_duration",
]

# The JWS algorithms any token may be signed with, for the validator (its `algorithms` setting
# chooses among these) and `mltokens check` alike: RSA, RSA-PSS, ECDSA; never none or HMAC.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256")
"""Those the local issuer signs with."""
ISSUERS = ("local", "keycloak")
LOCAL_ISSUER_URL = "http://127.0.0.1:8901"
CKAN_OPTION_PREFIX = "ckanext.mltokens."
"""The CKAN plugin reads each setting from the ini option of this prefix and the setting's name."""


def _issuer_kind(value: str) -> str | None:
    return None if value in ISSUERS else f"{value!r} is not one of: {', '.join(ISSUERS)}"


def _postgresql(value: str) -> str | None:
    return None if value.startswith("postgresql") else "must be a PostgreSQL URL (postgresql://user@host:port/db)"


def _positive(value: timedelta) -> str | None:
    return None if value > timedelta(0) else "must be positive"


def _signing_algorithm(value: str) -> str | None:
    return None if value in SIGNING_ALGORITHMS else f"must be one of {', '.join(SIGNING_ALGORITHMS)}"


@dataclass(frozen=True)
class Settings(Section, env_prefix=ENV_PREFIX, table=None):
    """The token service's settings: the `mltokens` CLI, the issuers, the lifecycle, the CKAN plugin."""

    database_url: str = setting(
        "postgresql://postgres@127.0.0.1:5432/mltokens",
        "SQLAlchemy URL of the token store (PostgreSQL).",
        check=_postgresql,
    )
    issuer: str = setting("local", "Issuer kind: `local` (embedded default) or `keycloak`.", check=_issuer_kind)
    issuer_url: str = setting(
        LOCAL_ISSUER_URL,
        "The `iss` of tokens, which the validator trusts by default. For the local issuer, the base URL where "
        "`mltokens issuer serve` publishes /.well-known/openid-configuration and the JWKS. With issuer = "
        "keycloak the default is `{keycloak_server_url}/realms/{keycloak_realm}`; set it to the realm's public "
        "URL when Keycloak's `hostname` differs from the URL mltokens calls it at (docs/keycloak.md).",
        check=http_url,
    )
    audience: str = setting("model-api", "The `aud` of every token: the model API audience.")
    default_ttl: timedelta = setting(timedelta(days=30), "Lifetime of a token when none is asked for.")
    max_ttl: timedelta = setting(timedelta(days=90), "Longest lifetime a token may be given.", check=_positive)
    max_tokens_per_owner: int = setting(20, "Most active tokens one owner may hold.", check=at_least(1))
    max_creations_per_hour: int = setting(
        30,
        "Most tokens one owner may create in an hour (brute-force and runaway-script protection).",
        check=at_least(1),
    )
    max_token_rate_limit: int = setting(
        50, "Highest per-token rate limit (requests per second) a user may set on a token."
    )
    max_token_daily_quota: int = setting(
        1_000_000, "Highest per-token daily quota (requests per day) a user may set on a token."
    )
    renew_grace: timedelta = setting(
        timedelta(0), "How long the old token keeps working after a renewal (0 = revoked at once)."
    )
    rotate_grace: timedelta = setting(
        timedelta(minutes=15),
        "How long the old token keeps working after a rotation (`mltoken_rotate`, the token page's Rotate, "
        "`mltokens token rotate`): long enough for every client to pick up the new one (docs/user-guide.md).",
    )
    token_prefix: str = setting(
        DEFAULT_PREFIX,
        "Put in front of every token handed out (not client-credentials secrets), so secret scanners recognise "
        "it; empty for none (docs/security.md).",
        check=check_prefix,
    )
    retention: timedelta = setting(
        timedelta(days=30), "How long revoked or expired tokens stay listed before `prune` removes them."
    )
    audit_retention: timedelta = setting(timedelta(days=365), "How long audit events are kept.")
    usage_retention: timedelta = setting(
        timedelta(days=90),
        "How long daily usage counts are kept (`prune` removes older days; at least 30d, the token page's chart).",
        check=lambda value: None if value >= timedelta(days=30) else "must be at least 30d",
    )
    grantable_roles: tuple[str, ...] = setting(
        ("model:sentiment:predict", "model:sentiment:train", "model:vision:predict", "model:vision:train"),
        "Local issuer: roles any user may put on a token (comma-separated in the environment).",
    )
    key_passphrase: str = setting(
        "",
        "Local issuer: passphrase that encrypts the private signing keys at rest. Required to sign or rotate.",
        secret=True,
    )
    signing_algorithm: str = setting(
        "RS256", "Local issuer: JWS algorithm (RS256, RS384, RS512 or PS256).", check=_signing_algorithm
    )
    leeway: timedelta = setting(timedelta(seconds=30), "Clock skew allowed on `exp`, `nbf` and `iat`.")
    owner_claim: str = setting("owner", "Claim naming the owner's user id.")
    owner_name_claim: str = setting("owner_name", "Claim naming the owner's user name.")
    owner_kind_claim: str = setting(
        "owner_kind", "Claim naming the owner's kind: `user`, or `organization` for an organization's token."
    )
    token_id_claim: str = setting("token_id", "Claim carrying the token id (stable across renewals).")
    token_expiry_claim: str = setting(
        "token_exp",
        "Claim carrying the ML token's expiry (epoch seconds) in every JWT fetched with a client-credentials "
        "token's id and secret; the validator refuses such a JWT after it, whatever its own `exp` says.",
    )
    credential_claim: str = setting(
        "token_cred",
        "Claim naming the credential (client secret) a client-credentials JWT was fetched with; a renewal "
        "revokes the old credential's JWTs by it.",
    )
    limits_claim: str = setting(
        "limits",
        'Claim carrying a token\'s own limits, e.g. {"rps": 5, "daily": 10000} (absent = route limits only).',
    )
    roles_claim: str = setting("roles", "Claim listing the granted roles (Keycloak's realm_access.roles is also read).")
    keycloak_server_url: str = setting("", "Keycloak issuer: base URL of Keycloak (e.g. https://keycloak.example.org).")
    keycloak_realm: str = setting(
        "mltokens", "Keycloak issuer: realm holding one client per ML token (its SSO Session Max must fit max_ttl)."
    )
    keycloak_users_realm: str = setting(
        "", "Keycloak issuer: realm of the human users whose roles bound what they may grant (default: keycloak_realm)."
    )
    keycloak_admin_client_id: str = setting(
        "mltokens-admin", "Keycloak issuer: service-account client in keycloak_realm that manages token clients."
    )
    keycloak_admin_client_secret: str = setting("", "Keycloak issuer: that client's secret.", secret=True)
    keycloak_admin_username: str = setting(
        "", "Keycloak issuer: log in as this admin user instead of the service-account client."
    )
    keycloak_admin_password: str = setting("", "Keycloak issuer: the admin user's password.", secret=True)
    keycloak_admin_realm: str = setting("master", "Keycloak issuer: realm the admin user logs in to.")
    keycloak_role_prefix: str = setting("model:", "Keycloak issuer: only roles with this prefix may go on tokens.")
    keycloak_client_prefix: str = setting("mlt-", "Keycloak issuer: clientId prefix of token clients.")
    keycloak_timeout: timedelta = setting(timedelta(seconds=10), "Keycloak issuer: timeout of every call.")
    client_credentials_lifespan: timedelta = setting(
        timedelta(minutes=15),
        "Keycloak issuer: lifespan of each access token fetched with a client-credentials token's id and secret "
        "(the client's `access.token.lifespan`; at most the token's lifetime, and never valid past its expiry).",
    )

    def __post_init__(self) -> None:
        # The local default is never a Keycloak `iss` (that always ends in /realms/<realm>): with the
        # keycloak issuer it stands for "not set", and the realm's URL is the default.
        if self.issuer == "keycloak" and self.issuer_url == LOCAL_ISSUER_URL and self.keycloak_server_url:
            object.__setattr__(self, "issuer_url", self.keycloak_realm_url)

    @property
    def keycloak_realm_url(self) -> str:
        """The ML-token realm at the URL mltokens calls Keycloak at (its back channel)."""
        return f"{self.keycloak_server_url.rstrip('/')}/realms/{self.keycloak_realm}"

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """The file's `[mltokens]` (or top-level keys), then `MLTOKENS_*` variables."""
        return cls.from_mapping(cls.read(path, os.environ if env is None else env))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Settings:
        settings = cls(**cls.parse(raw))
        settings.check()
        return settings

    def check(self) -> None:
        """Each setting's own check, then those that relate settings to each other."""
        self.check_each()
        if not timedelta(0) < self.default_ttl <= self.max_ttl:
            raise ConfigError("default_ttl: must be positive and not above max_ttl")
        if not timedelta(seconds=1) <= self.client_credentials_lifespan <= self.max_ttl:
            raise ConfigError("client_credentials_lifespan: must be at least 1s and not above max_ttl")
        if self.issuer == "keycloak":
            self._check_keycloak()

    def _check_keycloak(self) -> None:
        if not self.keycloak_server_url.startswith(("http://", "https://")):
            raise ConfigError("keycloak_server_url: required (an http(s) URL) when issuer = keycloak")
        as_user = self.keycloak_admin_username and self.keycloak_admin_password
        if not (self.keycloak_admin_client_secret or as_user):
            raise ConfigError(
                "keycloak_admin_client_secret (or keycloak_admin_username and keycloak_admin_password): "
                "required when issuer = keycloak"
            )
