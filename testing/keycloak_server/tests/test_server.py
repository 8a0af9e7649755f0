"""Behaviours of the Keycloak test server that the mltokens issuer relies on.

Tokens are checked with plain PyJWT against the realm's certs endpoint, and the
Admin API through python-keycloak or raw HTTP where the exact body matters.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from keycloak import KeycloakAdmin, KeycloakOpenID
from keycloak.exceptions import KeycloakPostError

from ..fixtures import KeycloakServerInfo

TIMEOUT = 10


@pytest.fixture
def admin(keycloak_server: KeycloakServerInfo, keycloak_realm: str) -> KeycloakAdmin:
    return keycloak_server.admin(keycloak_realm)


def make_client(admin: KeycloakAdmin, client_id: str, **extra: Any) -> tuple[str, str]:
    """Create a confidential client with a service account; return (uuid, secret)."""
    payload = {"clientId": client_id, "serviceAccountsEnabled": True, "publicClient": False}
    payload.update(extra)
    uuid = admin.create_client(payload)
    return uuid, admin.get_client_secrets(uuid)["value"]


def token_url(server: KeycloakServerInfo, realm: str) -> str:
    return f"{server.url}/realms/{realm}/protocol/openid-connect/token"


def client_credentials(server: KeycloakServerInfo, realm: str, client_id: str, secret: str) -> requests.Response:
    return requests.post(
        token_url(server, realm),
        timeout=TIMEOUT,
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )


def verify(server: KeycloakServerInfo, realm: str, token: str, **options: Any) -> dict[str, Any]:
    """Verify ``token`` with PyJWT and the realm's JWKS, as a gateway would."""
    jwks = jwt.PyJWKClient(f"{server.url}/realms/{realm}/protocol/openid-connect/certs")
    key = jwks.get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["RS256"], issuer=f"{server.url}/realms/{realm}", **options)


def mint(server: KeycloakServerInfo, realm: str, client_id: str, secret: str) -> dict[str, Any]:
    response = client_credentials(server, realm, client_id, secret)
    assert response.status_code == 200, response.text
    return verify(server, realm, response.json()["access_token"], options={"verify_aud": False})


# -- discovery and keys -------------------------------------------------------


def test_discovery_and_certs(keycloak_server: KeycloakServerInfo, keycloak_realm: str) -> None:
    base = f"{keycloak_server.url}/realms/{keycloak_realm}"
    doc = requests.get(f"{base}/.well-known/openid-configuration", timeout=TIMEOUT).json()
    assert doc["issuer"] == base
    assert doc["jwks_uri"] == f"{base}/protocol/openid-connect/certs"
    assert doc["token_endpoint"] == f"{base}/protocol/openid-connect/token"
    keys = requests.get(doc["jwks_uri"], timeout=TIMEOUT).json()["keys"]
    sig = [k for k in keys if k["use"] == "sig"]
    assert [k["alg"] for k in sig] == ["RS256"] and sig[0]["kty"] == "RSA" and sig[0]["kid"]
    other = requests.get(f"{keycloak_server.url}/realms/master/protocol/openid-connect/certs", timeout=TIMEOUT).json()[
        "keys"
    ]
    assert {k["kid"] for k in other}.isdisjoint({k["kid"] for k in keys})


# -- client credentials tokens ------------------------------------------------


def test_service_account_token_claims(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    uuid, secret = make_client(admin, "ml-token-1")
    claims = mint(keycloak_server, keycloak_realm, "ml-token-1", secret)
    sa_user = admin.get_client_service_account_user(uuid)
    assert sa_user["username"] == "service-account-ml-token-1"
    assert claims["sub"] == sa_user["id"]
    assert claims["azp"] == "ml-token-1"
    assert claims["typ"] == "Bearer"
    assert claims["preferred_username"] == "service-account-ml-token-1"
    assert claims["client_id"] == "ml-token-1"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["jti"] and claims["scope"]
    assert f"default-roles-{keycloak_realm}" in claims["realm_access"]["roles"]


def test_client_auth_with_http_basic(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    _, secret = make_client(admin, "basic-client")
    creds = base64.b64encode(f"basic-client:{secret}".encode()).decode()
    response = requests.post(
        token_url(keycloak_server, keycloak_realm),
        timeout=TIMEOUT,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {creds}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"
    assert "refresh_token" not in response.json()


def test_client_lifespan_overrides_realm(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    _, secret = make_client(admin, "hour", attributes={"access.token.lifespan": "3600"})
    claims = mint(keycloak_server, keycloak_realm, "hour", secret)
    assert claims["exp"] - claims["iat"] == 3600


def test_lifespan_capped_by_sso_session_max(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    """keycloak/keycloak#43410: the client's lifespan does not beat SSO Session Max."""
    _, secret = make_client(admin, "month", attributes={"access.token.lifespan": "2592000"})
    claims = mint(keycloak_server, keycloak_realm, "month", secret)
    assert claims["exp"] - claims["iat"] == 36000
    admin.update_realm(keycloak_realm, {"ssoSessionMaxLifespan": 7200})
    assert admin.get_realm(keycloak_realm)["ssoSessionMaxLifespan"] == 7200
    response = client_credentials(keycloak_server, keycloak_realm, "month", secret)
    assert response.json()["expires_in"] == 7200


def test_client_session_max_caps_lifespan(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    """A shorter Client Session Max (client attribute) cuts the token; a longer one
    does not lift the SSO Session Max cap (keycloak/keycloak#43410)."""
    _, secret = make_client(
        admin,
        "capped",
        attributes={"access.token.lifespan": "86400", "client.session.max.lifespan": "600"},
    )
    claims = mint(keycloak_server, keycloak_realm, "capped", secret)
    assert claims["exp"] - claims["iat"] == 600
    _, secret = make_client(
        admin,
        "uncapped",
        attributes={"access.token.lifespan": "86400", "client.session.max.lifespan": "1728000000"},
    )
    claims = mint(keycloak_server, keycloak_realm, "uncapped", secret)
    assert claims["exp"] - claims["iat"] == 36000


def test_realm_access_token_lifespan(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    admin.update_realm(keycloak_realm, {"accessTokenLifespan": 120})
    _, secret = make_client(admin, "short")
    claims = mint(keycloak_server, keycloak_realm, "short", secret)
    assert claims["exp"] - claims["iat"] == 120


def test_disabled_client_is_refused(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    uuid, secret = make_client(admin, "to-revoke")
    assert client_credentials(keycloak_server, keycloak_realm, "to-revoke", secret).ok
    admin.update_client(uuid, {"enabled": False})
    response = client_credentials(keycloak_server, keycloak_realm, "to-revoke", secret)
    assert response.status_code == 401
    assert response.json() == {
        "error": "invalid_client",
        "error_description": "Invalid client or Invalid client credentials",
    }


def test_disabled_client_tokens_inactive(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    """Introspection reports a disabled client's tokens inactive, as Keycloak does."""
    uuid, secret = make_client(admin, "introspected")
    _, checker_secret = make_client(admin, "checker")
    token = client_credentials(keycloak_server, keycloak_realm, "introspected", secret).json()["access_token"]
    url = f"{token_url(keycloak_server, keycloak_realm)}/introspect"
    form = {"token": token, "client_id": "checker", "client_secret": checker_secret}
    body = requests.post(url, data=form, timeout=TIMEOUT).json()
    assert body["active"] is True and body["azp"] == "introspected"
    admin.update_client(uuid, {"enabled": False})
    assert requests.post(url, data=form, timeout=TIMEOUT).json() == {"active": False}


def test_service_accounts_disabled(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    _, secret = make_client(admin, "no-sa", serviceAccountsEnabled=False)
    response = client_credentials(keycloak_server, keycloak_realm, "no-sa", secret)
    assert response.status_code == 401
    assert response.json() == {
        "error": "unauthorized_client",
        "error_description": "Client not enabled to retrieve service account",
    }


def test_secret_regeneration_invalidates_old_secret(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    uuid, old = make_client(admin, "rotating")
    new = admin.generate_client_secrets(uuid)["value"]
    assert new != old and admin.get_client_secrets(uuid) == {"type": "secret", "value": new}
    response = client_credentials(keycloak_server, keycloak_realm, "rotating", old)
    assert response.status_code == 401
    assert response.json() == {
        "error": "unauthorized_client",
        "error_description": "Invalid client or Invalid client credentials",
    }
    assert client_credentials(keycloak_server, keycloak_realm, "rotating", new).ok


def test_requested_scopes(keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin) -> None:
    _, secret = make_client(admin, "scoped")
    url = token_url(keycloak_server, keycloak_realm)
    form = {"grant_type": "client_credentials", "client_id": "scoped", "client_secret": secret}
    response = requests.post(url, data={**form, "scope": "phone"}, timeout=TIMEOUT)
    assert set(response.json()["scope"].split()) == {"profile", "email", "phone"}
    response = requests.post(url, data={**form, "scope": "phone bogus"}, timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (
        400,
        {"error": "invalid_scope", "error_description": "Invalid scopes: phone bogus"},
    )


def test_unknown_client_and_grant(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    response = client_credentials(keycloak_server, keycloak_realm, "nobody", "x")
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
    _, secret = make_client(admin, "granted")
    response = requests.post(
        token_url(keycloak_server, keycloak_realm),
        timeout=TIMEOUT,
        data={"grant_type": "magic", "client_id": "granted", "client_secret": secret},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_mappers_in_token(keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin) -> None:
    uuid, secret = make_client(admin, "mapped")
    admin.create_client({"clientId": "model-api", "bearerOnly": True})
    for config in (
        {"included.custom.audience": "https://models.example", "access.token.claim": "true"},
        {"included.client.audience": "model-api", "access.token.claim": "true"},
    ):
        admin.add_mapper_to_client(
            uuid,
            {
                "name": str(len(config)) + str(config)[:20],
                "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "config": config,
            },
        )
    for name, value, json_type in (
        ("owner", "alice", "String"),
        ("token_id", "42", "long"),
        ("ml.meta", '{"tier": "gpu"}', "JSON"),
    ):
        admin.add_mapper_to_client(
            uuid,
            {
                "name": name,
                "protocol": "openid-connect",
                "protocolMapper": "oidc-hardcoded-claim-mapper",
                "config": {
                    "claim.name": name,
                    "claim.value": value,
                    "jsonType.label": json_type,
                    "access.token.claim": "true",
                },
            },
        )
    admin.add_mapper_to_client(
        uuid,
        {
            "name": "silent",
            "protocol": "openid-connect",
            "protocolMapper": "oidc-hardcoded-claim-mapper",
            "config": {"claim.name": "silent", "claim.value": "x"},
        },
    )  # no access.token.claim
    assert len(admin.get_mappers_from_client(uuid)) == 6
    response = client_credentials(keycloak_server, keycloak_realm, "mapped", secret)
    claims = verify(
        keycloak_server,
        keycloak_realm,
        response.json()["access_token"],
        audience="https://models.example",
    )
    assert set(claims["aud"]) >= {"https://models.example", "model-api"}
    assert claims["owner"] == "alice" and claims["token_id"] == 42
    assert claims["ml"] == {"meta": {"tier": "gpu"}}
    assert "silent" not in claims


def test_client_scopes_in_token(keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin) -> None:
    """Mappers of a client's default client scopes apply; an optional scope's only
    when requested; without the built-in "roles" scope there are no role claims."""
    uuid, secret = make_client(admin, "scoped-aud")
    audience = admin.create_client_scope({"name": "model-audience", "protocol": "openid-connect"})
    admin.add_mapper_to_client_scope(
        audience,
        {
            "name": "aud",
            "protocol": "openid-connect",
            "protocolMapper": "oidc-audience-mapper",
            "config": {"included.custom.audience": "models", "access.token.claim": "true"},
        },
    )
    extra = admin.create_client_scope({"name": "ml-extra", "protocol": "openid-connect"})
    admin.add_mapper_to_client_scope(
        extra,
        {
            "name": "tier",
            "protocol": "openid-connect",
            "protocolMapper": "oidc-hardcoded-claim-mapper",
            "config": {"claim.name": "tier", "claim.value": "gpu", "access.token.claim": "true"},
        },
    )
    admin.add_client_default_client_scope(uuid, audience, {})
    admin.add_client_optional_client_scope(uuid, extra, {})
    claims = mint(keycloak_server, keycloak_realm, "scoped-aud", secret)
    assert "models" in claims["aud"] and "tier" not in claims
    response = requests.post(
        token_url(keycloak_server, keycloak_realm),
        timeout=TIMEOUT,
        data={
            "grant_type": "client_credentials",
            "client_id": "scoped-aud",
            "client_secret": secret,
            "scope": "ml-extra",
        },
    )
    assert verify(keycloak_server, keycloak_realm, response.json()["access_token"], audience="models")["tier"] == "gpu"
    assert "ml-extra" in response.json()["scope"].split()
    roles_scope = admin.get_client_scope_by_name("roles")["id"]
    admin.delete_client_default_client_scope(uuid, roles_scope)
    claims = mint(keycloak_server, keycloak_realm, "scoped-aud", secret)
    assert "realm_access" not in claims and "resource_access" not in claims


def test_full_scope_disabled_limits_roles(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    uuid, secret = make_client(admin, "narrow", fullScopeAllowed=False)
    for name in ("predict", "train"):
        admin.create_realm_role({"name": name})
    sa = admin.get_client_service_account_user(uuid)["id"]
    admin.assign_realm_roles(sa, [admin.get_realm_role("predict"), admin.get_realm_role("train")])
    claims = mint(keycloak_server, keycloak_realm, "narrow", secret)
    assert "realm_access" not in claims
    admin.assign_realm_roles_to_client_scope(uuid, [admin.get_realm_role("predict")])
    claims = mint(keycloak_server, keycloak_realm, "narrow", secret)
    assert claims["realm_access"]["roles"] == ["predict"]


def test_service_account_roles_in_token(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    uuid, secret = make_client(admin, "roled")
    api_uuid = admin.create_client({"clientId": "model-api", "bearerOnly": True})
    admin.create_realm_role({"name": "ml-user"})
    admin.create_client_role(api_uuid, {"name": "predict"})
    sa = admin.get_client_service_account_user(uuid)["id"]
    admin.assign_realm_roles(sa, [admin.get_realm_role("ml-user")])
    admin.assign_client_role(sa, api_uuid, [admin.get_client_role(api_uuid, "predict")])
    assert [r["name"] for r in admin.get_client_roles_of_user(sa, api_uuid)] == ["predict"]
    claims = mint(keycloak_server, keycloak_realm, "roled", secret)
    assert "ml-user" in claims["realm_access"]["roles"]
    assert claims["resource_access"]["model-api"] == {"roles": ["predict"]}
    assert "model-api" in claims["aud"]
    admin.delete_client_roles_of_user(sa, api_uuid, [admin.get_client_role(api_uuid, "predict")])
    claims = mint(keycloak_server, keycloak_realm, "roled", secret)
    assert "model-api" not in claims.get("resource_access", {})


def test_group_roles_in_token(keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin) -> None:
    uuid, secret = make_client(admin, "grouped")
    admin.create_realm_role({"name": "gpu"})
    parent = admin.create_group({"name": "ml"})
    child = admin.create_group({"name": "team"}, parent=parent)
    admin.assign_group_realm_roles(parent, [admin.get_realm_role("gpu")])
    sa = admin.get_client_service_account_user(uuid)["id"]
    admin.group_user_add(sa, child)
    assert [g["path"] for g in admin.get_user_groups(sa)] == ["/ml/team"]
    assert "gpu" in mint(keycloak_server, keycloak_realm, "grouped", secret)["realm_access"]["roles"]
    admin.group_user_remove(sa, child)
    assert "gpu" not in mint(keycloak_server, keycloak_realm, "grouped", secret)["realm_access"]["roles"]


# -- realm import ----------------------------------------------------------------

REALM_FILES = sorted((Path(__file__).resolve().parents[3] / "deploy" / "keycloak").glob("*-realm.json"))


@pytest.mark.parametrize("realm_file", REALM_FILES, ids=[p.name for p in REALM_FILES])
def test_imports_the_deployment_realm(keycloak_server: KeycloakServerInfo, realm_file: Path) -> None:
    """The realm files Docker deployments load into the real Keycloak (the ML realm and the
    users' realm) import here too, and what they declare (clients, users, roles, service-account
    roles) is honoured."""
    export = json.loads(realm_file.read_text())
    master = keycloak_server.admin()
    export = {**export, "realm": f"import-{export['realm']}"}
    master.create_realm(export)
    try:
        admin = keycloak_server.admin(export["realm"])
        for client in export.get("clients", []):
            assert admin.get_client_id(client["clientId"])
        for user in export.get("users", []):
            user_id = admin.get_user_id(user["username"])
            assert user_id, user["username"]
            names = {r["name"] for r in admin.get_realm_roles_of_user(user_id)}
            assert names == set(user.get("realmRoles", [])), user["username"]
            if user.get("serviceAccountClientId"):
                client = next(c for c in export["clients"] if c["clientId"] == user["serviceAccountClientId"])
                issuer = KeycloakAdmin(
                    server_url=keycloak_server.url,
                    client_id=client["clientId"],
                    client_secret_key=client["secret"],
                    realm_name=export["realm"],
                )
                held = user.get("clientRoles", {}).get("realm-management", [])
                if "view-clients" in held:
                    assert issuer.get_client_id(client["clientId"])
    finally:
        master.delete_realm(export["realm"])


def test_import_rejects_unknown_fields_and_roles(keycloak_server: KeycloakServerInfo) -> None:
    master = keycloak_server.admin()
    with pytest.raises(KeycloakPostError) as err:
        master.create_realm({"realm": "bad-import", "users": [{"username": "x", "bogus": 1}]})
    assert err.value.response_code == 400 and b"Unrecognized field" in err.value.error_message
    with pytest.raises(KeycloakPostError) as err:
        master.create_realm({"realm": "bad-import", "users": [{"username": "x", "realmRoles": ["nope"]}]})
    assert err.value.response_code == 400
    assert "bad-import" not in {r["realm"] for r in master.get_realms()}


# -- password grant, refresh, logout ------------------------------------------


def test_password_refresh_logout(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    admin.create_user(
        {
            "username": "alice",
            "enabled": True,
            "email": "alice@example.org",
            "credentials": [{"type": "password", "value": "pw"}],
        }
    )
    admin.create_client({"clientId": "app", "publicClient": True})
    oid = KeycloakOpenID(server_url=keycloak_server.url, realm_name=keycloak_realm, client_id="app")
    with pytest.raises(Exception) as bad:
        oid.token("alice", "wrong")
    assert bad.value.response_code == 401  # type: ignore[attr-defined]
    token = oid.token("alice", "pw")
    assert oid.userinfo(token["access_token"])["preferred_username"] == "alice"
    token = oid.refresh_token(token["refresh_token"])
    oid.logout(token["refresh_token"])
    with pytest.raises(KeycloakPostError) as err:
        oid.refresh_token(token["refresh_token"])
    assert b"Session not active" in err.value.error_message


# -- Admin API: authentication and permissions ---------------------------------


def test_admin_api_requires_bearer(keycloak_server: KeycloakServerInfo) -> None:
    response = requests.get(f"{keycloak_server.url}/admin/realms", timeout=TIMEOUT)
    assert response.status_code == 401
    assert response.json() == {"error": "HTTP 401 Unauthorized"}


def test_service_account_admin_permissions(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    uuid, secret = make_client(admin, "issuer")
    sa = admin.get_client_service_account_user(uuid)["id"]
    issuer = KeycloakAdmin(
        server_url=keycloak_server.url,
        client_id="issuer",
        client_secret_key=secret,
        realm_name=keycloak_realm,
    )
    issuer.connection.get_token()
    token = issuer.connection.token["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    clients_url = f"{keycloak_server.url}/admin/realms/{keycloak_realm}/clients"
    response = requests.get(clients_url, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 403 and response.json() == {"error": "HTTP 403 Forbidden"}
    management = admin.get_client_id("realm-management")
    admin.assign_client_role(
        sa,
        management,
        [admin.get_client_role(management, name) for name in ("manage-clients", "manage-users")],
    )
    new_client = issuer.create_client({"clientId": "made-by-sa", "serviceAccountsEnabled": True})
    assert issuer.get_client(new_client)["clientId"] == "made-by-sa"
    # Other realms stay out of reach.
    response = requests.get(f"{keycloak_server.url}/admin/realms/master/clients", headers=headers, timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (403, {"error": "HTTP 403 Forbidden"})
    # manage-users does not let it hand out admin roles it does not hold.
    with pytest.raises(Exception) as err:
        issuer.assign_client_role(sa, management, [issuer.get_client_role(management, "realm-admin")])
    assert err.value.response_code == 403  # type: ignore[attr-defined]


# -- Admin API: strictness -----------------------------------------------------


def _admin_headers(admin: KeycloakAdmin) -> dict[str, str]:
    admin.connection.get_token()
    return {"Authorization": f"Bearer {admin.connection.token['access_token']}"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("", {"error": "Realm not found."}),
        ("/clients/nope", {"error": "Could not find client"}),
        ("/users/nope", {"error": "User not found"}),
        ("/roles/nope", {"error": "Could not find role"}),
        ("/roles-by-id/nope", {"error": "Could not find role with id"}),
        ("/no/such/thing", {"error": "HTTP 404 Not Found"}),
    ],
)
def test_not_found_bodies(
    keycloak_server: KeycloakServerInfo,
    keycloak_realm: str,
    admin: KeycloakAdmin,
    path: str,
    body: dict[str, str],
) -> None:
    realm = "missing-realm" if path == "" else keycloak_realm
    response = requests.get(
        f"{keycloak_server.url}/admin/realms/{realm}{path}",
        headers=_admin_headers(admin),
        timeout=TIMEOUT,
    )
    assert (response.status_code, response.json()) == (404, body)


def test_conflicts_unknown_fields_and_methods(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    base = f"{keycloak_server.url}/admin/realms/{keycloak_realm}"
    headers = _admin_headers(admin)
    admin.create_client({"clientId": "dup"})
    response = requests.post(f"{base}/clients", json={"clientId": "dup"}, headers=headers, timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (
        409,
        {"errorMessage": "Client dup already exists"},
    )
    admin.create_user({"username": "bob"})
    response = requests.post(f"{base}/users", json={"username": "bob"}, headers=headers, timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (
        409,
        {"errorMessage": "User exists with same username"},
    )
    admin.create_realm_role({"name": "r1"})
    response = requests.post(f"{base}/roles", json={"name": "r1"}, headers=headers, timeout=TIMEOUT)
    assert response.json() == {"errorMessage": "Role with name r1 already exists"}
    response = requests.post(f"{base}/clients", json={"clientId": "x", "bogus": 1}, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 400
    assert response.json()["error"].startswith('Unrecognized field "bogus"')
    response = requests.patch(f"{base}/clients", json={}, headers=headers, timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (
        405,
        {"error": "HTTP 405 Method Not Allowed"},
    )


def test_create_returns_location(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    base = f"{keycloak_server.url}/admin/realms/{keycloak_realm}"
    response = requests.post(
        f"{base}/clients", json={"clientId": "loc"}, headers=_admin_headers(admin), timeout=TIMEOUT
    )
    assert response.status_code == 201 and response.content == b""
    uuid = response.headers["Location"].rsplit("/", 1)[1]
    assert response.headers["Location"] == f"{base}/clients/{uuid}"
    assert admin.get_clients() and admin.get_client_id("loc") == uuid


def test_unmanaged_user_attributes(admin: KeycloakAdmin) -> None:
    """Keycloak 24+: attributes outside the user profile are dropped unless the
    profile's unmanagedAttributePolicy allows them; service accounts keep theirs."""
    user_id = admin.create_user({"username": "carol", "attributes": {"team": ["a"]}})
    assert "attributes" not in admin.get_user(user_id)
    profile = admin.get_realm_users_profile()
    admin.update_realm_users_profile({**profile, "unmanagedAttributePolicy": "ADMIN_EDIT"})
    admin.update_user(user_id, {"attributes": {"team": ["a"]}})
    assert admin.get_user(user_id)["attributes"] == {"team": ["a"]}
    uuid = admin.create_client({"clientId": "sa-attrs", "serviceAccountsEnabled": True})
    sa = admin.get_client_service_account_user(uuid)["id"]
    admin.update_realm_users_profile(profile)
    admin.update_user(sa, {"attributes": {"owner": ["carol"]}})
    assert admin.get_user(sa)["attributes"] == {"owner": ["carol"]}


def test_user_queries(admin: KeycloakAdmin) -> None:
    for name in ("anna", "annabel", "ben"):
        admin.create_user({"username": name, "email": f"{name}@example.org", "enabled": True})
    assert {u["username"] for u in admin.get_users({"search": "ann"})} == {"anna", "annabel"}
    assert [u["username"] for u in admin.get_users({"username": "anna", "exact": True})] == ["anna"]
    assert len(admin.get_users({"first": 1, "max": 1})) == 1
    assert admin.users_count() == 3
    assert admin.users_count({"search": "ben"}) == 1
    user_id = admin.get_user_id("ben")
    admin.disable_user(user_id)
    assert admin.get_user(user_id)["enabled"] is False


def test_expired_admin_token_is_rejected(
    keycloak_server: KeycloakServerInfo, keycloak_realm: str, admin: KeycloakAdmin
) -> None:
    admin.update_realm(keycloak_realm, {"accessTokenLifespan": 4})
    _, secret = make_client(admin, "brief")
    management = admin.get_client_id("realm-management")
    sa = admin.get_client_service_account_user(admin.get_client_id("brief"))["id"]
    admin.assign_client_role(sa, management, [admin.get_client_role(management, "view-realm")])
    token = client_credentials(keycloak_server, keycloak_realm, "brief", secret).json()
    url = f"{keycloak_server.url}/admin/realms/{keycloak_realm}"
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    assert requests.get(url, headers=headers, timeout=TIMEOUT).status_code == 200
    # Wait out the token's own exp, however long the steps above took on a busy machine.
    exp = jwt.decode(token["access_token"], options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, exp - time.time()) + 1.1)
    assert requests.get(url, headers=headers, timeout=TIMEOUT).status_code == 401
