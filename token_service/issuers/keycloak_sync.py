"""`mltokens sync`: reconcile Keycloak with the token store.

- Token clients whose token is revoked, expired or gone from the store are disabled,
  then deleted (this also retries a disable that failed at revoke time).
- Active, unexpired tokens of users disabled or deleted in Keycloak are revoked (an
  organization's tokens are not a Keycloak user's: the CKAN plugin manages them). Expired
  ones are left as they are (listed as expired, not revoked, and not counted): no validator
  accepts them, and their clients are deleted above, so they cannot be renewed either.
The store always wins: sync never re-enables a client or un-revokes a token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, select

from ..lifecycle import Actor, Lifecycle
from ..store import Token
from .base import USER
from .keycloak import KeycloakIssuer, keycloak_call

log = logging.getLogger(__name__)
SYNC_ACTOR = Actor(id="sync", name="mltokens sync", is_admin=True, source="sync")


@dataclass(frozen=True)
class SyncReport:
    clients_deleted: int
    tokens_revoked: int


def sync(lifecycle: Lifecycle, issuer: KeycloakIssuer) -> SyncReport:
    """Retire the clients of tokens no longer live, then revoke the tokens of owners gone from Keycloak."""
    now = lifecycle.clock()
    tokens = _tokens(lifecycle, issuer)
    live = {t.id for t in tokens if t.status == "active" and t.expires_at > now}
    deleted = _retire_clients(issuer, live)
    owners = {(t.owner_id, t.owner_name) for t in tokens if t.id in live and t.owner_kind == USER}
    return SyncReport(deleted, _revoke_for_gone_owners(lifecycle, issuer, owners))


def _tokens(lifecycle: Lifecycle, issuer: KeycloakIssuer) -> Sequence[Row[Any]]:
    """This issuer's tokens in the store: id, status, expiry and owner."""
    with lifecycle.store.transaction() as session:
        return session.execute(
            select(Token.id, Token.status, Token.expires_at, Token.owner_id, Token.owner_name, Token.owner_kind).where(
                Token.issuer == issuer.kind
            )
        ).all()


def _retire_clients(issuer: KeycloakIssuer, live: set[str]) -> int:
    """Disable, then delete, every token client whose token is not live; how many were."""
    prefix = issuer.settings.keycloak_client_prefix
    with keycloak_call("list token clients"):
        clients = [c for c in issuer.admin.get_clients() if c["clientId"].startswith(prefix)]
    deleted = 0
    for client in clients:
        if client["clientId"][len(prefix) :] in live:
            continue
        with keycloak_call("retire a token client"):
            if client.get("enabled", True):
                issuer.admin.update_client(client["id"], {"enabled": False})
            issuer.admin.delete_client(client["id"])
        deleted += 1
        log.info("sync: deleted client %s", client["clientId"])
    return deleted


def _revoke_for_gone_owners(lifecycle: Lifecycle, issuer: KeycloakIssuer, owners: set[tuple[str, str]]) -> int:
    """Revoke the unexpired tokens of owners deleted or disabled in Keycloak; how many were."""
    revoked = 0
    for owner_id, owner_name in sorted(owners):
        with keycloak_call("read a token owner"):
            users = issuer.users_admin.get_users({"username": owner_name, "exact": True})
        user = next((u for u in users if u.get("username") == owner_name.lower()), None)
        if user is None or not user.get("enabled", False):
            state = "deleted" if user is None else "disabled"
            revoked += len(
                lifecycle.revoke_all(owner_id, SYNC_ACTOR, f"owner {state} in Keycloak", include_expired=False)
            )
    return revoked
