"""`mltokens sync`: reconcile Keycloak with the token store.

- Token clients whose token is revoked, expired or gone from the store are disabled,
  then deleted (this also retries a disable that failed at revoke time).
- Active tokens of owners disabled or deleted in Keycloak are revoked.
The store always wins: sync never re-enables a client or un-revokes a token.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select

from ..lifecycle import Actor, Lifecycle
from ..store import Token
from .keycloak import KeycloakIssuer, keycloak_call

log = logging.getLogger(__name__)
SYNC_ACTOR = Actor(id="sync", name="mltokens sync", is_admin=True, source="sync")


@dataclass(frozen=True)
class SyncReport:
    clients_deleted: int
    tokens_revoked: int


def sync(lifecycle: Lifecycle, issuer: KeycloakIssuer) -> SyncReport:
    now = lifecycle.clock()
    prefix = issuer.settings.keycloak_client_prefix
    with lifecycle.store.transaction() as s:
        rows = s.execute(select(Token.id, Token.status, Token.expires_at, Token.owner_id, Token.owner_name)
                         .where(Token.issuer == issuer.kind)).all()
    live = {r.id for r in rows if r.status == "active" and r.expires_at > now}

    deleted = 0
    with keycloak_call("list token clients"):
        clients = [c for c in issuer.admin.get_clients() if c["clientId"].startswith(prefix)]
    for client in clients:
        if client["clientId"][len(prefix):] in live:
            continue
        with keycloak_call("retire a token client"):
            if client.get("enabled", True):
                issuer.admin.update_client(client["id"], {"enabled": False})
            issuer.admin.delete_client(client["id"])
        deleted += 1
        log.info("sync: deleted client %s", client["clientId"])

    revoked = 0
    owners = {(r.owner_id, r.owner_name) for r in rows if r.id in live}
    for owner_id, owner_name in sorted(owners):
        with keycloak_call("read a token owner"):
            users = issuer.users_admin.get_users({"username": owner_name, "exact": True})
        user = next((u for u in users if u.get("username") == owner_name.lower()), None)
        if user is None or not user.get("enabled", False):
            state = "deleted" if user is None else "disabled"
            revoked += len(lifecycle.revoke_all(owner_id, SYNC_ACTOR, f"owner {state} in Keycloak"))
    return SyncReport(deleted, revoked)
