"""The Issuer protocol: what the lifecycle needs from whoever mints tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

USER = "user"
ORGANIZATION = "organization"
OWNER_KINDS = (USER, ORGANIZATION)


@dataclass(frozen=True)
class Owner:
    """Whom a token belongs to: a user (a CKAN user, or an operator-named account) or an
    organization (a CKAN organization: a non-human owner whose admins manage its tokens).

    An owner is its kind and id together: a user and an organization never share tokens,
    limits or a token list, whatever their ids.
    """

    id: str
    name: str
    kind: str = USER


@dataclass(frozen=True)
class Grant:
    """What to mint: the token's identity, its owner, roles and expiry."""

    token_id: str
    name: str
    owner: Owner
    roles: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    client_id: str | None = None
    kind: str = "access_token"
    rate_limit: float | None = None
    daily_quota: int | None = None

    def limits(self) -> dict[str, float | int]:
        """The token's own limits as carried in its `limits` claim; empty when it has none."""
        limits: dict[str, float | int] = {}
        if self.rate_limit is not None:
            limits["rps"] = self.rate_limit
        if self.daily_quota is not None:
            limits["daily"] = self.daily_quota
        return limits


@dataclass(frozen=True)
class Minted:
    """A freshly minted credential. `secret` is shown once and never stored."""

    secret: str
    jti: str
    subject: str
    issued_at: datetime
    expires_at: datetime
    client_id: str | None = None


class Issuer(Protocol):
    kind: str
    issuer_url: str
    #: what a token may be: `access_token` (a JWT shown once) and, where the issuer
    #: supports it, `client_credentials` (a client id and secret shown once).
    token_kinds: frozenset[str]

    def grantable_roles(self, owner: Owner) -> frozenset[str]:
        """Roles this owner may put on a token."""

    def issue(self, grant: Grant) -> Minted:
        """Mint the first credential of a new token."""

    def reissue(self, grant: Grant) -> Minted:
        """Mint a new credential (new jti, new expiry) for an existing token."""

    def retire(self, token_id: str, client_id: str | None) -> None:
        """Tidy up at the issuer after a revocation has committed (e.g. disable a client)."""

    def jwks(self) -> dict[str, Any]:
        """The public keys tokens are verified with."""

    def prune(self, now: datetime) -> int:
        """Drop issuer-side material no token needs any more; returns how many items."""
