"""The production issuer: every ML token is a Keycloak confidential client of its own.

Create makes the client (service account on, browser flows off, lifespan attribute,
audience and owner/token-id claim mappers), grants it a subset of the owner's roles
and mints a token with a client-credentials grant.

A "client credentials" token hands the client id and secret to the user, who fetches
JWTs at will: its client gets a short lifespan (`client_credentials_lifespan`) and two
more claims, the ML token's expiry (the validator refuses a JWT past it whatever its
`exp`) and the credential id (renewal revokes every JWT of the old secret by it). Keycloak caps a client-credentials
token's `exp` at the realm's SSO Session Max whatever the client's lifespan says
(keycloak/keycloak#43410), and at Client Session Max too (the client's
`client.session.max.lifespan`, else the realm's `clientSessionMaxLifespan`, when greater
than 0): every minted `exp` is checked and a shorter token than promised is refused,
never handed out.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import jwt
from keycloak import KeycloakAdmin, KeycloakOpenID, KeycloakOpenIDConnection
from keycloak.exceptions import KeycloakError

from ..config import Settings
from ..errors import InvalidInput, IssuerUnavailable, NoIssuerAccount, TTLTooLong
from .base import ORGANIZATION, Grant, Minted, Owner

log = logging.getLogger(__name__)

ACCESS_TOKEN = "access_token"
CLIENT_CREDENTIALS = "client_credentials"
#: A minted `exp` may fall short of the asked expiry by the time the mint took, no more.
EXP_TOLERANCE = timedelta(seconds=60)


@contextmanager
def keycloak_call(what: str) -> Iterator[None]:
    """Turn any Keycloak failure into IssuerUnavailable with a message safe for users."""
    try:
        yield
    except KeycloakError as exc:
        log.error("Keycloak failed to %s: %s", what, exc)
        raise IssuerUnavailable(f"Keycloak could not {what}; try again later.") from exc


# A confidential client that only has a service account (the client-credentials grant): the
# issuer's own client (bootstrap) and every ML token's client.
SERVICE_ACCOUNT_CLIENT: dict[str, Any] = {
    "enabled": True,
    "publicClient": False,
    "serviceAccountsEnabled": True,
    "standardFlowEnabled": False,
    "implicitFlowEnabled": False,
    "directAccessGrantsEnabled": False,
    "clientAuthenticatorType": "client-secret",
}


class KeycloakIssuer:
    kind = "keycloak"
    token_kinds = frozenset({ACCESS_TOKEN, CLIENT_CREDENTIALS})

    def __init__(self, settings: Settings, clock: Callable[[], datetime]) -> None:
        self.settings = settings
        self.clock = clock
        self.server_url = settings.keycloak_server_url.rstrip("/")
        self.realm = settings.keycloak_realm
        self.users_realm = settings.keycloak_users_realm or settings.keycloak_realm
        self.issuer_url = settings.issuer_url  # the `iss` of its tokens: the realm's public URL
        self.timeout = max(1, int(settings.keycloak_timeout.total_seconds()))

    # -- connections -------------------------------------------------------------

    def _admin_for(self, realm: str) -> KeycloakAdmin:
        settings = self.settings
        if settings.keycloak_admin_username:
            connection = KeycloakOpenIDConnection(
                server_url=self.server_url,
                username=settings.keycloak_admin_username,
                password=settings.keycloak_admin_password,
                realm_name=realm,
                user_realm_name=settings.keycloak_admin_realm,
                client_id="admin-cli",
                timeout=self.timeout,
            )
        else:
            connection = KeycloakOpenIDConnection(
                server_url=self.server_url,
                realm_name=realm,
                user_realm_name=self.realm,
                client_id=settings.keycloak_admin_client_id,
                client_secret_key=settings.keycloak_admin_client_secret,
                grant_type="client_credentials",
                timeout=self.timeout,
            )
        return KeycloakAdmin(connection=connection)

    @cached_property
    def admin(self) -> KeycloakAdmin:
        return self._admin_for(self.realm)

    @cached_property
    def users_admin(self) -> KeycloakAdmin:
        return self.admin if self.users_realm == self.realm else self._admin_for(self.users_realm)

    def _openid(self, client_id: str, secret: str) -> KeycloakOpenID:
        return KeycloakOpenID(
            server_url=self.server_url,
            realm_name=self.realm,
            client_id=client_id,
            client_secret_key=secret,
            timeout=self.timeout,
        )

    # -- Issuer protocol ---------------------------------------------------------

    def grantable_roles(self, owner: Owner) -> frozenset[str]:
        """The owner's effective realm roles and model-API client roles with the configured prefix.

        An owner with no account, or a disabled one, in the users' realm gets NoIssuerAccount, which says why.
        An organization is no Keycloak user: its tokens may carry the token realm's roles with
        the prefix (the ones a token's client can be granted); the caller narrows them to the
        organization's own models (the CKAN plugin: the models its datasets describe).
        """
        if owner.kind == ORGANIZATION:
            with keycloak_call("read the realm's roles"):
                names = {r["name"] for r in self.admin.get_realm_roles()}
            return frozenset(n for n in names if n.startswith(self.settings.keycloak_role_prefix))
        with keycloak_call("read your roles"):
            users = self.users_admin.get_users({"username": owner.name, "exact": True})
            user = next((u for u in users if u.get("username") == owner.name.lower()), None)
            if user is None:
                raise NoIssuerAccount(
                    f'Your user name "{owner.name}" has no account in Keycloak, the identity provider of the token '
                    "service, so there is no role you could grant. Ask the operators of this site to create it."
                )
            if not user.get("enabled", False):
                raise NoIssuerAccount(
                    f'Your account "{owner.name}" in Keycloak, the identity provider of the token service, is '
                    "disabled, so there is no role you could grant. Ask the operators of this site to enable it."
                )
            names = {r["name"] for r in self.users_admin.get_composite_realm_roles_of_user(user["id"])}
            audience_client = self.users_admin.get_client_id(self.settings.audience)
            if audience_client:
                names |= {
                    r["name"] for r in self.users_admin.get_composite_client_roles_of_user(user["id"], audience_client)
                }
        return frozenset(n for n in names if n.startswith(self.settings.keycloak_role_prefix))

    def issue(self, grant: Grant) -> Minted:
        if grant.kind not in self.token_kinds:
            raise InvalidInput(f"Unknown token kind {grant.kind!r}.", field="kind")
        client_id = self.settings.keycloak_client_prefix + grant.token_id
        credential = _new_credential()
        with keycloak_call("create the token's client"):
            internal_id = self.admin.create_client(self._client_representation(grant, client_id, credential))
        try:
            with keycloak_call("grant the token's roles"):
                account = self.admin.get_client_service_account_user(internal_id)
                roles = [self.admin.get_realm_role(name) for name in grant.roles]
                self.admin.assign_realm_roles(account["id"], [{"id": r["id"], "name": r["name"]} for r in roles])
            with keycloak_call("read the token client's secret"):
                secret = self.admin.get_client_secrets(internal_id)["value"]
            return self._mint(grant, client_id, secret, account["id"], credential)
        except Exception:
            self._delete_quietly(internal_id)
            raise

    def reissue(self, grant: Grant) -> Minted:
        """New secret, new lifespan, new token; the old secret stops working at once.

        The secret is regenerated first, then the claims change: a JWT fetched with the old
        secret can only carry the old credential id, which the renewal revokes. (One fetched
        with the new secret before the claims change carries it too, but nobody has that
        secret until the renewal returns.)
        """
        client_id = grant.client_id or self.settings.keycloak_client_prefix + grant.token_id
        internal_id = self._internal_id(client_id)
        credential = _new_credential()
        with keycloak_call("renew the token's client"):
            secret = self.admin.generate_client_secrets(internal_id)["value"]
            self.admin.update_client(internal_id, {"attributes": self._lifespan(grant)})
            if grant.kind == CLIENT_CREDENTIALS:
                self._set_claims(internal_id, self._client_credentials_claims(grant, credential))
            account = self.admin.get_client_service_account_user(internal_id)
        return self._mint(grant, client_id, secret, account["id"], credential)

    def retire(self, token_id: str, client_id: str | None) -> None:
        """Disable the token's client; `mltokens sync` deletes it later and retries failures."""
        client_id = client_id or self.settings.keycloak_client_prefix + token_id
        with keycloak_call("disable the token's client"):
            internal_id = self.admin.get_client_id(client_id)
            if internal_id:
                self.admin.update_client(internal_id, {"enabled": False})

    def jwks(self) -> dict[str, Any]:
        with keycloak_call("publish its keys"):
            return self._openid(self.settings.keycloak_admin_client_id, "").certs()

    def prune(self, now: datetime) -> int:
        """Keycloak-side tidying is `mltokens sync`'s job (it needs the store)."""
        return 0

    # -- helpers -----------------------------------------------------------------

    def _mint(self, grant: Grant, client_id: str, secret: str, subject: str, credential: str) -> Minted:
        if grant.kind == CLIENT_CREDENTIALS:
            # The user fetches tokens themselves; every one carries the token id claim (revoking
            # the token id revokes them all), the credential id (revoked by the next renewal)
            # and the token's expiry (no JWT of this client is valid past it).
            return Minted(
                secret=secret,
                jti=credential,
                subject=subject,
                issued_at=grant.issued_at,
                expires_at=grant.expires_at,
                client_id=client_id,
            )
        with keycloak_call("mint the token"):
            response = self._openid(client_id, secret).token(grant_type="client_credentials")
        token = response["access_token"]
        claims = jwt.decode(token, options={"verify_signature": False})
        expires_at = datetime.fromtimestamp(claims["exp"], UTC)
        if expires_at < grant.expires_at - EXP_TOLERANCE:
            log.error(
                "Keycloak cut token %s to exp %s (asked %s): realm %s's SSO Session Max "
                "(ssoSessionMaxLifespan) and Client Session Max (clientSessionMaxLifespan, or the "
                "client attribute client.session.max.lifespan of %s) must fit max_ttl; "
                "`mltokens keycloak bootstrap` raises the realm's (keycloak/keycloak#43410)",
                grant.token_id,
                expires_at.isoformat(),
                grant.expires_at.isoformat(),
                self.realm,
                client_id,
            )
            # The user's choice of lifetime is what cannot be met: a field error they can act on.
            raise TTLTooLong(
                "Keycloak would issue a token that expires sooner than asked; nothing was created. "
                "Ask for a shorter lifetime, or ask an operator to raise the realm's session maximums.",
                field="ttl",
            )
        return Minted(
            secret=token,
            jti=claims["jti"],
            subject=claims.get("sub", subject),
            issued_at=datetime.fromtimestamp(claims["iat"], UTC),
            expires_at=expires_at,
            client_id=client_id,
        )

    def _lifespan(self, grant: Grant) -> dict[str, str]:
        """The client's access-token lifespan: the whole lifetime for the one token we mint;
        for a client-credentials token, the short lifespan of each JWT fetched with it."""
        lifetime = grant.expires_at - grant.issued_at
        if grant.kind == CLIENT_CREDENTIALS:
            lifetime = min(lifetime, self.settings.client_credentials_lifespan)
        return {"access.token.lifespan": str(max(1, int(lifetime.total_seconds())))}

    def _client_credentials_claims(self, grant: Grant, credential: str) -> list[dict[str, Any]]:
        settings = self.settings
        return [
            _claim(settings.token_expiry_claim, str(int(grant.expires_at.timestamp())), "long"),
            _claim(settings.credential_claim, credential),
        ]

    def _set_claims(self, internal_id: str, mappers: list[dict[str, Any]]) -> None:
        """Set hardcoded-claim mappers on a client: update those it has (by name), add the others."""
        existing = {m["name"]: m for m in self.admin.get_mappers_from_client(internal_id)}
        for mapper in mappers:
            old = existing.get(mapper["name"])
            if old is None:
                self.admin.add_mapper_to_client(internal_id, mapper)
            else:
                self.admin.update_client_mapper(internal_id, old["id"], {**mapper, "id": old["id"]})

    def _client_representation(self, grant: Grant, client_id: str, credential: str) -> dict[str, Any]:
        settings = self.settings
        mappers = [
            {
                "name": "model-api audience",
                "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "config": {
                    "included.custom.audience": settings.audience,
                    "access.token.claim": "true",
                    "id.token.claim": "false",
                },
            },
            _claim(settings.owner_claim, grant.owner.id),
            _claim(settings.owner_name_claim, grant.owner.name),
            _claim(settings.owner_kind_claim, grant.owner.kind),
            _claim(settings.token_id_claim, grant.token_id),
        ]
        if grant.limits():
            mappers.append(_claim(settings.limits_claim, json.dumps(grant.limits()), "JSON"))
        if grant.kind == CLIENT_CREDENTIALS:
            mappers += self._client_credentials_claims(grant, credential)
        return {
            "clientId": client_id,
            "name": f"ML token {grant.name}",
            "description": f"mltokens token {grant.token_id} of {grant.owner.name}",
            "protocol": "openid-connect",
            **SERVICE_ACCOUNT_CLIENT,
            "attributes": self._lifespan(grant),
            "protocolMappers": mappers,
        }

    def _internal_id(self, client_id: str) -> str:
        with keycloak_call("find the token's client"):
            internal_id = self.admin.get_client_id(client_id)
        if not internal_id:
            raise IssuerUnavailable("The token's Keycloak client is missing; revoke this token and create a new one.")
        return internal_id

    def _delete_quietly(self, internal_id: str) -> None:
        try:
            self.admin.delete_client(internal_id)
        except KeycloakError:
            log.exception("could not delete half-made Keycloak client %s; sync will", internal_id)


def _claim(name: str, value: str, json_type: str = "String") -> dict[str, Any]:
    """A hardcoded-claim mapper putting `name: value` into access tokens only."""
    return {
        "name": name,
        "protocol": "openid-connect",
        "protocolMapper": "oidc-hardcoded-claim-mapper",
        "config": {
            "claim.name": name,
            "claim.value": value,
            "jsonType.label": json_type,
            "access.token.claim": "true",
            "id.token.claim": "false",
            "userinfo.token.claim": "false",
        },
    }


def _new_credential() -> str:
    """The id of one client secret of a client-credentials token (its `jti` in the store)."""
    return f"client:{uuid.uuid4()}"
