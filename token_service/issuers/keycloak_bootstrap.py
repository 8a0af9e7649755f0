"""`mltokens keycloak bootstrap`: make a realm ready for the Keycloak issuer, idempotently.

It creates or updates the ML-token realm so that the longest token fits both session caps
Keycloak puts on a client-credentials token's `exp`: SSO Session Max
(keycloak/keycloak#43410) and Client Session Max when it is set (greater than 0). Token
clients are made by the issuer without their own `client.session.max.lifespan`, so they
inherit the realm's; one set on a token client later is caught by the issuer's `exp`
check. It also makes the issuer's own service-account client with the least realm-management roles it
needs, the model API client that names the audience, and example model roles.
"""

from __future__ import annotations

from datetime import timedelta

from keycloak import KeycloakAdmin

from ..config import Settings
from .keycloak import SERVICE_ACCOUNT_CLIENT, keycloak_call

#: What the issuer's service account needs in realm-management, and nothing more:
#: create/disable/delete token clients, read their secrets, grant roles to their
#: service accounts, read users and their roles.
ADMIN_ROLES = ("manage-clients", "view-clients", "manage-users", "view-users", "query-users", "view-realm")
#: Headroom above max_ttl for the realm's session maximum.
SESSION_HEADROOM = timedelta(days=1)


def bootstrap(admin: KeycloakAdmin, settings: Settings, roles: tuple[str, ...]) -> list[str]:
    """Bring the realm named in settings to what the issuer needs; returns what was done."""
    done: list[str] = []
    realm = settings.keycloak_realm
    session_max = int((settings.max_ttl + SESSION_HEADROOM).total_seconds())
    with keycloak_call("bootstrap the realm"):
        existing = {r["realm"]: r for r in admin.get_realms()}
        if realm not in existing:
            admin.create_realm(
                {"realm": realm, "enabled": True, "ssoSessionMaxLifespan": session_max, "clientSessionMaxLifespan": 0}
            )
            done.append(
                f"created realm {realm} (SSO Session Max {session_max}s, Client Session Max 0: follows SSO Session Max)"
            )
        else:
            done += _fit_session_caps(admin, realm, existing[realm], session_max)
        admin.change_current_realm(realm)

        present = {r["name"] for r in admin.get_realm_roles()}
        for name in roles:
            if name not in present:
                admin.create_realm_role({"name": name, "description": "mltokens model role"})
                done.append(f"created realm role {name}")

        if admin.get_client_id(settings.audience) is None:
            admin.create_client(
                {
                    "clientId": settings.audience,
                    "name": "Model API (token audience)",
                    "enabled": True,
                    "publicClient": False,
                    "serviceAccountsEnabled": False,
                    "standardFlowEnabled": False,
                    "implicitFlowEnabled": False,
                    "directAccessGrantsEnabled": False,
                }
            )
            done.append(f"created client {settings.audience} (the model API audience)")

        client_id = settings.keycloak_admin_client_id
        internal_id = admin.get_client_id(client_id)
        if internal_id is None:
            internal_id = admin.create_client(
                {
                    "clientId": client_id,
                    "name": "mltokens issuer",
                    **SERVICE_ACCOUNT_CLIENT,
                }
            )
            done.append(f"created client {client_id} (the issuer's service account)")
        account = admin.get_client_service_account_user(internal_id)
        management = admin.get_client_id("realm-management")
        held = {r["name"] for r in admin.get_client_roles_of_user(account["id"], management)}
        missing = [r for r in ADMIN_ROLES if r not in held]
        if missing:
            admin.assign_client_role(
                account["id"], management, [admin.get_client_role(management, name) for name in missing]
            )
            done.append(f"granted {client_id} realm-management roles: {', '.join(missing)}")
    return done


def _fit_session_caps(admin: KeycloakAdmin, realm: str, current: dict, session_max: int) -> list[str]:
    """Raise SSO Session Max, and Client Session Max where it is set, to `session_max`."""
    low = {}
    if (current.get("ssoSessionMaxLifespan") or 0) < session_max:
        low["SSO Session Max (ssoSessionMaxLifespan)"] = "ssoSessionMaxLifespan"
    if 0 < (current.get("clientSessionMaxLifespan") or 0) < session_max:  # 0: follows SSO Session Max
        low["Client Session Max (clientSessionMaxLifespan)"] = "clientSessionMaxLifespan"
    if low:
        admin.update_realm(realm, {key: session_max for key in low.values()})
    return [f"raised realm {realm}'s {name} to {session_max}s to fit max_ttl" for name in low]


def admin_secret(admin: KeycloakAdmin, settings: Settings) -> str:
    """The issuer client's secret, for the operator to put into MLTOKENS_KEYCLOAK_ADMIN_CLIENT_SECRET."""
    with keycloak_call("read the issuer client's secret"):
        return admin.get_client_secrets(admin.get_client_id(settings.keycloak_admin_client_id))["value"]
