"""The HTTP calls the Keycloak issuer, bootstrap and sync make, sent to one server, recorded.

Each step is recorded as (status, shape of the body), the shape being the JSON with every
value replaced by its type name, except values that are the same on every run (error
bodies, names we chose, booleans we set), which are kept.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import jwt
import requests

from testing.keycloak_server.fixtures import KeycloakServerInfo

TIMEOUT = 30


def shape(value: Any) -> Any:
    """Keys and value types of a JSON value; a list is the union of its items' shapes."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        merged: dict[str, Any] = {}
        kinds = set()
        for item in value:
            s = shape(item)
            if isinstance(s, dict):
                merged.update(s)
            else:
                kinds.add(repr(s))
        return [dict(sorted(merged.items()))] if merged else sorted(kinds)
    return type(value).__name__


class Recorder:
    """Sends the calls to one server and records what came back, step by step."""

    def __init__(self, server: KeycloakServerInfo, realm: str) -> None:
        self.base = server.url
        self.realm = realm
        self.steps: dict[str, tuple[int, Any]] = {}
        self.session = requests.Session()
        self.bearer = ""

    def call(
        self, step: str, method: str, path: str, *, exact: bool = False, auth: str | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {auth if auth is not None else self.bearer}"}
        answer = self.session.request(
            method, self.base + path.format(realm=self.realm), headers=headers, timeout=TIMEOUT, **kwargs
        )
        body: Any
        try:
            body = answer.json() if answer.content else None
        except ValueError:
            body = answer.text
        keep = exact or answer.status_code >= 400
        self.steps[step] = (answer.status_code, self.plain(body) if keep else shape(body))
        return answer

    def plain(self, body: Any) -> Any:
        """A kept body with this run's realm name replaced by `{realm}`."""
        return json.loads(json.dumps(body).replace(self.realm, "{realm}"))

    def token(self, step: str, realm: str, data: dict[str, str]) -> dict[str, Any]:
        answer = self.session.post(
            f"{self.base}/realms/{realm}/protocol/openid-connect/token", data=data, timeout=TIMEOUT
        )
        body = answer.json()
        if answer.status_code == 200:
            claims = jwt.decode(body["access_token"], options={"verify_signature": False})
            self.steps[step] = (200, shape(body) | {"scope": _words(body.get("scope"))})
            self.steps[step + " claims"] = (
                200,
                shape(claims)
                | {
                    "jti prefix": claims["jti"].split(":")[0] if ":" in claims["jti"] else "(uuid)",
                    "scope": _words(claims.get("scope")),
                    "typ": claims.get("typ"),
                    "azp": claims.get("azp"),
                },
            )
        else:
            self.steps[step] = (answer.status_code, self.plain(body))
        return body


def _words(scope: str | None) -> list[str] | None:
    """A `scope` value as the set it is (RFC 6749 3.3: the order means nothing)."""
    return None if scope is None else sorted(scope.split())


def run(server: KeycloakServerInfo) -> dict[str, tuple[int, Any]]:
    """The sequence, in a realm of its own (deleted at the end)."""
    r = Recorder(server, f"diff-{uuid.uuid4().hex[:8]}")
    admin = r.token(
        "admin login",
        "master",
        {
            "grant_type": "password",
            "client_id": "admin-cli",
            "username": server.admin_user,
            "password": server.admin_password,
        },
    )
    r.bearer = admin["access_token"]
    try:
        _bootstrap(r)
        _issuer(r)
    finally:
        r.bearer = admin["access_token"]
        r.call("delete realm", "DELETE", "/admin/realms/{realm}")
    return r.steps


def _location_id(answer: requests.Response) -> str:
    return answer.headers["Location"].rstrip("/").rsplit("/", 1)[1]


def _bootstrap(r: Recorder) -> None:
    """What `mltokens keycloak bootstrap` sends (as the master admin)."""
    r.call("list realms", "GET", "/admin/realms")
    r.call(
        "create realm",
        "POST",
        "/admin/realms",
        exact=True,
        json={"realm": r.realm, "enabled": True, "ssoSessionMaxLifespan": 86400, "clientSessionMaxLifespan": 0},
    )
    r.call("create realm again", "POST", "/admin/realms", json={"realm": r.realm, "enabled": True})
    r.call("update realm", "PUT", "/admin/realms/{realm}", exact=True, json={"ssoSessionMaxLifespan": 90000})
    r.call("unknown realm", "GET", "/admin/realms/no-such-realm")
    r.call("list realm roles", "GET", "/admin/realms/{realm}/roles")
    r.call(
        "create realm role",
        "POST",
        "/admin/realms/{realm}/roles",
        exact=True,
        json={"name": "model:a:predict", "description": "mltokens model role"},
    )
    r.call("create realm role again", "POST", "/admin/realms/{realm}/roles", json={"name": "model:a:predict"})
    r.call("get realm role", "GET", "/admin/realms/{realm}/roles/model:a:predict")
    r.call("unknown realm role", "GET", "/admin/realms/{realm}/roles/no-such-role")
    r.call("find missing client", "GET", "/admin/realms/{realm}/clients", exact=True, params={"clientId": "model-api"})
    audience = r.call(
        "create audience client",
        "POST",
        "/admin/realms/{realm}/clients",
        exact=True,
        json={
            "clientId": "model-api",
            "name": "Model API (token audience)",
            "enabled": True,
            "publicClient": False,
            "serviceAccountsEnabled": False,
            "standardFlowEnabled": False,
            "implicitFlowEnabled": False,
            "directAccessGrantsEnabled": False,
        },
    )
    r.call("create client again", "POST", "/admin/realms/{realm}/clients", json={"clientId": "model-api"})
    r.call(
        "service account of a client without one",
        "GET",
        f"/admin/realms/{{realm}}/clients/{_location_id(audience)}/service-account-user",
    )
    r.call("unknown property", "POST", "/admin/realms/{realm}/clients", json={"clientId": "x", "nonsense": 1})
    issuer = r.call(
        "create issuer client",
        "POST",
        "/admin/realms/{realm}/clients",
        exact=True,
        json={
            "clientId": "mltokens-admin",
            "name": "mltokens issuer",
            "enabled": True,
            "publicClient": False,
            "serviceAccountsEnabled": True,
            "standardFlowEnabled": False,
            "implicitFlowEnabled": False,
            "directAccessGrantsEnabled": False,
            "clientAuthenticatorType": "client-secret",
        },
    )
    issuer_id = _location_id(issuer)
    account = r.call(
        "issuer service account", "GET", f"/admin/realms/{{realm}}/clients/{issuer_id}/service-account-user"
    ).json()
    management = r.call(
        "find realm-management", "GET", "/admin/realms/{realm}/clients", params={"clientId": "realm-management"}
    ).json()[0]["id"]
    r.call(
        "issuer's management roles (none)",
        "GET",
        f"/admin/realms/{{realm}}/users/{account['id']}/role-mappings/clients/{management}",
        exact=True,
    )
    roles = [
        r.call(f"management role {name}", "GET", f"/admin/realms/{{realm}}/clients/{management}/roles/{name}").json()
        for name in ("manage-clients", "view-clients", "manage-users", "view-users", "query-users")
    ]
    r.call(
        "grant management roles",
        "POST",
        f"/admin/realms/{{realm}}/users/{account['id']}/role-mappings/clients/{management}",
        exact=True,
        json=roles,
    )
    r.call(
        "issuer's management roles",
        "GET",
        f"/admin/realms/{{realm}}/users/{account['id']}/role-mappings/clients/{management}",
    )
    r.steps["issuer secret"] = (
        200,
        shape(
            secret := r.session.get(
                f"{r.base}/admin/realms/{r.realm}/clients/{issuer_id}/client-secret",
                headers={"Authorization": f"Bearer {r.bearer}"},
                timeout=TIMEOUT,
            ).json()
        ),
    )
    r.issuer_secret = secret["value"]  # type: ignore[attr-defined]
    r.management = management  # type: ignore[attr-defined]
    r.view_realm = r.call(
        "management role view-realm",
        "GET",  # type: ignore[attr-defined]
        f"/admin/realms/{{realm}}/clients/{management}/roles/view-realm",
    ).json()
    r.issuer_account = account["id"]  # type: ignore[attr-defined]


def _issuer(r: Recorder) -> None:
    """What the issuer and sync send, logged in as the issuer's service account."""
    master = r.bearer
    r.token(
        "issuer login, wrong secret",
        r.realm,
        {
            "grant_type": "client_credentials",
            "client_id": "mltokens-admin",
            "client_secret": "wrong",
            "scope": "openid",
        },
    )
    login = r.token(
        "issuer login",
        r.realm,
        {
            "grant_type": "client_credentials",
            "client_id": "mltokens-admin",
            "client_secret": r.issuer_secret,
            "scope": "openid",
        },
    )
    r.bearer = login["access_token"]
    r.call("read realm role without view-realm", "GET", "/admin/realms/{realm}/roles/model:a:predict")
    r.call(
        "grant view-realm",
        "POST",
        f"/admin/realms/{{realm}}/users/{r.issuer_account}/role-mappings/clients/{r.management}",
        auth=master,
        json=[r.view_realm],
    )
    r.bearer = r.token(
        "issuer login again",
        r.realm,
        {
            "grant_type": "client_credentials",
            "client_id": "mltokens-admin",
            "client_secret": r.issuer_secret,
            "scope": "openid",
        },
    )["access_token"]
    role = r.call("read realm role", "GET", "/admin/realms/{realm}/roles/model:a:predict").json()
    r.call(
        "find missing user",
        "GET",
        "/admin/realms/{realm}/users",
        exact=True,
        params={"username": "alice", "exact": "true"},
    )
    user = _location_id(
        r.call(
            "create user",
            "POST",
            "/admin/realms/{realm}/users",
            exact=True,
            json={"username": "alice", "enabled": True},
        )
    )
    r.call(
        "give user a role", "POST", f"/admin/realms/{{realm}}/users/{user}/role-mappings/realm", exact=True, json=[role]
    )
    r.call("find user", "GET", "/admin/realms/{realm}/users", params={"username": "alice", "exact": "true"})
    r.call("user's composite realm roles", "GET", f"/admin/realms/{{realm}}/users/{user}/role-mappings/realm/composite")
    audience = r.call(
        "find audience client", "GET", "/admin/realms/{realm}/clients", params={"clientId": "model-api"}
    ).json()[0]["id"]
    r.call(
        "user's composite client roles",
        "GET",
        f"/admin/realms/{{realm}}/users/{user}/role-mappings/clients/{audience}/composite",
        exact=True,
    )
    claim = {"protocol": "openid-connect", "protocolMapper": "oidc-hardcoded-claim-mapper"}
    token_client = _location_id(
        r.call(
            "create token client",
            "POST",
            "/admin/realms/{realm}/clients",
            exact=True,
            json={
                "clientId": "mlt-1",
                "name": "ML token t",
                "description": "mltokens token 1 of alice",
                "enabled": True,
                "protocol": "openid-connect",
                "publicClient": False,
                "serviceAccountsEnabled": True,
                "standardFlowEnabled": False,
                "implicitFlowEnabled": False,
                "directAccessGrantsEnabled": False,
                "clientAuthenticatorType": "client-secret",
                "attributes": {"access.token.lifespan": "7200"},
                "protocolMappers": [
                    {
                        "name": "model-api audience",
                        "protocol": "openid-connect",
                        "protocolMapper": "oidc-audience-mapper",
                        "config": {
                            "included.custom.audience": "model-api",
                            "access.token.claim": "true",
                            "id.token.claim": "false",
                        },
                    },
                    claim
                    | {
                        "name": "owner",
                        "config": {
                            "claim.name": "owner",
                            "claim.value": "o1",
                            "jsonType.label": "String",
                            "access.token.claim": "true",
                            "id.token.claim": "false",
                        },
                    },
                    claim
                    | {
                        "name": "token_exp",
                        "config": {
                            "claim.name": "token_exp",
                            "claim.value": "1999999999",
                            "jsonType.label": "long",
                            "access.token.claim": "true",
                        },
                    },
                    claim
                    | {
                        "name": "limits",
                        "config": {
                            "claim.name": "limits",
                            "claim.value": '{"rps": 3.0}',
                            "jsonType.label": "JSON",
                            "access.token.claim": "true",
                        },
                    },
                ],
            },
        )
    )
    client_path = f"/admin/realms/{{realm}}/clients/{token_client}"
    account = r.call("token client's service account", "GET", client_path + "/service-account-user").json()
    r.call(
        "grant the token's roles",
        "POST",
        f"/admin/realms/{{realm}}/users/{account['id']}/role-mappings/realm",
        exact=True,
        json=[{"id": role["id"], "name": role["name"]}],
    )
    secret = r.call("token client's secret", "GET", client_path + "/client-secret").json()["value"]
    grant = {"grant_type": "client_credentials", "client_id": "mlt-1", "client_secret": secret}
    r.token("mint (scope=openid)", r.realm, grant | {"scope": "openid"})
    as_token = r.token("mint (no scope)", r.realm, grant)["access_token"]
    r.call("admin call without admin roles", "GET", "/admin/realms/{realm}/clients", auth=as_token)
    new_secret = r.call("regenerate secret", "POST", client_path + "/client-secret").json()["value"]
    r.token("mint with the old secret", r.realm, grant)
    r.call("update lifespan", "PUT", client_path, exact=True, json={"attributes": {"access.token.lifespan": "3600"}})
    mappers = r.call("list mappers", "GET", client_path + "/protocol-mappers/models").json()
    token_exp = next(m for m in mappers if m["name"] == "token_exp")
    r.call(
        "update mapper",
        "PUT",
        f"{client_path}/protocol-mappers/models/{token_exp['id']}",
        exact=True,
        json=token_exp | {"config": token_exp["config"] | {"claim.value": "2000000000"}},
    )
    r.call(
        "add mapper",
        "POST",
        client_path + "/protocol-mappers/models",
        exact=True,
        json=claim
        | {
            "name": "token_cred",
            "config": {
                "claim.name": "token_cred",
                "claim.value": "client:x",
                "jsonType.label": "String",
                "access.token.claim": "true",
            },
        },
    )
    r.call(
        "add mapper of an unknown type",
        "POST",
        client_path + "/protocol-mappers/models",
        json={"name": "x", "protocol": "openid-connect", "protocolMapper": "no-such-mapper", "config": {}},
    )
    r.token("mint with the new secret", r.realm, grant | {"client_secret": new_secret})
    r.call("disable token client", "PUT", client_path, exact=True, json={"enabled": False})
    r.token("mint from a disabled client", r.realm, grant | {"client_secret": new_secret})
    r.token("mint from an unknown client", r.realm, grant | {"client_id": "mlt-none"})
    r.call("list clients", "GET", "/admin/realms/{realm}/clients")
    r.call(
        "turn service accounts off",
        "PUT",
        client_path,
        exact=True,
        auth=master,
        json={"enabled": True, "serviceAccountsEnabled": False},
    )
    r.call("service account after turning it off", "GET", client_path + "/service-account-user")
    r.call("service account user after turning it off", "GET", f"/admin/realms/{{realm}}/users/{account['id']}")
    r.token("mint without service accounts", r.realm, grant | {"client_secret": new_secret})
    r.call("delete token client", "DELETE", client_path, exact=True)
    r.call("get deleted client", "GET", client_path)
    r.call("delete deleted client", "DELETE", client_path)
    r.call("disable user", "PUT", f"/admin/realms/{{realm}}/users/{user}", exact=True, json={"enabled": False})
    r.call("find disabled user", "GET", "/admin/realms/{realm}/users", params={"username": "alice", "exact": "true"})
    r.call("delete user", "DELETE", f"/admin/realms/{{realm}}/users/{user}", exact=True)
    r.call("unknown user", "GET", f"/admin/realms/{{realm}}/users/{user}")
    r.call("no bearer", "GET", "/admin/realms/{realm}/clients", auth="")
