"""The embedded default issuer: signs tokens with its own rotating key pairs.

It publishes an OpenID discovery document and a JWKS (see `local_http`), so the
validator, or any JWT-aware gateway, treats it like any other OIDC issuer.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jwt

from ..config import Settings
from ..store import Store
from .base import Grant, Minted, Owner
from .keyring import KeyRing

JWKS_PATH = "/jwks"
DISCOVERY_PATH = "/.well-known/openid-configuration"


class LocalIssuer:
    kind = "local"
    token_kinds = frozenset({"access_token"})

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], datetime]) -> None:
        self.settings = settings
        self.issuer_url = settings.issuer_url.rstrip("/")
        self.clock = clock
        self.keys = KeyRing(store, settings.key_passphrase, settings.signing_algorithm, settings.max_ttl)

    def grantable_roles(self, owner: Owner) -> frozenset[str]:
        return frozenset(self.settings.grantable_roles)

    def issue(self, grant: Grant) -> Minted:
        kid, private_key = self.keys.signing_key()
        now = grant.issued_at
        jti = str(uuid.uuid4())
        settings = self.settings
        claims: dict[str, Any] = {
            "iss": self.issuer_url,
            "aud": settings.audience,
            "sub": grant.owner.id,
            settings.owner_claim: grant.owner.id,
            settings.owner_name_claim: grant.owner.name,
            settings.owner_kind_claim: grant.owner.kind,
            settings.token_id_claim: grant.token_id,
            "jti": jti,
            "iat": int(now.timestamp()),
            "exp": int(grant.expires_at.timestamp()),
            "typ": "Bearer",
            settings.roles_claim: list(grant.roles),
            "scope": " ".join(grant.roles),
        }
        if grant.limits():
            claims[settings.limits_claim] = grant.limits()
        token = jwt.encode(
            claims, private_key, algorithm=settings.signing_algorithm, headers={"kid": kid, "typ": "JWT"}
        )
        return Minted(secret=token, jti=jti, subject=grant.owner.id, issued_at=now, expires_at=grant.expires_at)

    def reissue(self, grant: Grant) -> Minted:
        return self.issue(grant)

    def retire(self, token_id: str, client_id: str | None) -> None:
        """Nothing to tidy: a local token is dead once its revocation row exists."""

    def jwks(self) -> dict[str, Any]:
        return self.keys.jwks(self.clock())

    def prune(self, now: datetime) -> int:
        return self.keys.prune(now)

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer_url,
            "jwks_uri": self.issuer_url + JWKS_PATH,
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.settings.signing_algorithm],
            "token_endpoint_auth_methods_supported": ["none"],
            "claims_supported": [
                "iss",
                "aud",
                "sub",
                "jti",
                "iat",
                "exp",
                "scope",
                self.settings.owner_claim,
                self.settings.owner_name_claim,
                self.settings.owner_kind_claim,
                self.settings.token_id_claim,
                self.settings.roles_claim,
            ],
        }
