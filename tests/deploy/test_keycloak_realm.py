"""deploy/keycloak/: the two realm exports the compose Keycloak imports (issue 13 item 7).

`mltokens-realm.json` is the ML realm (one client per ML token, the long session limits those
need); `people-realm.json` is the users' realm (alice and bob, short human session limits).
Checked as data (against the settings and `mltokens keycloak bootstrap`'s constants) and
imported into the Keycloak-compatible test server and into the real Keycloak 26.7.3
(through the Admin API's realm import, the code path `--import-realm` takes too), where,
with the issuer logged in as the least-privilege master-realm user compose makes
(deploy/keycloak/issuer-user.sh), bootstrap must find nothing to do, the Keycloak issuer must
mint a full-length token for a demo user, and a human's session must follow the users' realm's limits."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import jwt
import pytest
from keycloak import KeycloakOpenID

from testing.keycloak_server.fixtures import KeycloakServerInfo
from testing.real_keycloak import HOME as KEYCLOAK_HOME
from tests.deploy.conftest import DOCKER
from tests.keycloak.conftest import REAL, USERS_REALM_ROLES, add_issuer_user, keycloak_server  # noqa: F401
from token_service.config import Settings
from token_service.errors import RolesNotAllowed
from token_service.issuers import Owner
from token_service.issuers.keycloak import KeycloakIssuer
from token_service.issuers.keycloak_bootstrap import ADMIN_ROLES, SESSION_HEADROOM, bootstrap
from token_service.lifecycle import Actor, Lifecycle, utcnow
from token_service.store import Store

REALM_FILE = DOCKER / "keycloak" / "mltokens-realm.json"
USERS_REALM_FILE = DOCKER / "keycloak" / "people-realm.json"
SETUP_SCRIPT = DOCKER / "keycloak" / "issuer-user.sh"
#: the human session limits a security policy would ask for (docs/keycloak.md, "One realm or two")
HUMAN_IDLE = timedelta(minutes=30)
HUMAN_MAX = timedelta(hours=12)


@pytest.fixture(scope="module")
def realm() -> dict[str, Any]:
    return json.loads(REALM_FILE.read_text())


@pytest.fixture(scope="module")
def people() -> dict[str, Any]:
    return json.loads(USERS_REALM_FILE.read_text())


def test_session_max_fits_the_longest_token(realm: dict[str, Any]) -> None:
    """keycloak/keycloak#43410: a client-credentials token's exp is cut to SSO Session Max."""
    longest = Settings().max_ttl
    assert timedelta(seconds=realm["ssoSessionMaxLifespan"]) >= longest + SESSION_HEADROOM  # as bootstrap sets it
    client_max = realm.get("clientSessionMaxLifespan", 0)
    assert client_max == 0 or timedelta(seconds=client_max) > longest


def test_the_ml_realm_holds_no_humans(realm: dict[str, Any], people: dict[str, Any]) -> None:
    """Its long session limits would apply to anyone logging in there: only service accounts live in it."""
    assert realm["users"] and all(u.get("serviceAccountClientId") for u in realm["users"])
    assert realm["realm"] != people["realm"]
    assert not realm["registrationAllowed"]


def test_human_users_get_sane_session_limits(people: dict[str, Any]) -> None:
    """The users' realm keeps the session limits a browser login should have, far below max_ttl."""
    assert timedelta(0) < timedelta(seconds=people["ssoSessionIdleTimeout"]) <= HUMAN_IDLE
    assert timedelta(0) < timedelta(seconds=people["ssoSessionMaxLifespan"]) <= HUMAN_MAX
    assert 0 <= people.get("clientSessionIdleTimeout", 0) <= people["ssoSessionIdleTimeout"]
    assert 0 <= people.get("clientSessionMaxLifespan", 0) <= people["ssoSessionMaxLifespan"]
    assert not people["rememberMe"]  # "remember me" would have limits of its own
    # the owner mapping by user name (docs/keycloak.md, "Owners"): nobody registers or renames into a name
    assert not people["registrationAllowed"] and not people["editUsernameAllowed"]
    assert {u["username"] for u in people["users"]} == {"alice", "bob"}
    assert not any(u.get("serviceAccountClientId") for u in people["users"])


def test_model_roles_and_audience_exist(realm: dict[str, Any], people: dict[str, Any]) -> None:
    """The issuer grants in the ML realm the role names an owner holds in the users' realm."""
    defaults = Settings()
    roles = {r["name"] for r in realm["roles"]["realm"]}
    assert set(defaults.grantable_roles) <= roles
    assert {r["name"] for r in people["roles"]["realm"]} == roles
    clients = {c["clientId"]: c for c in realm["clients"]}
    assert defaults.audience in clients
    for user in people["users"]:
        assert user.get("realmRoles") and set(user["realmRoles"]) <= roles


def test_admin_service_account_matches_bootstrap(realm: dict[str, Any]) -> None:
    clients = {c["clientId"]: c for c in realm["clients"]}
    admin = clients["mltokens-admin"]
    assert admin["serviceAccountsEnabled"] and not admin["publicClient"]
    assert not (admin["standardFlowEnabled"] or admin["implicitFlowEnabled"] or admin["directAccessGrantsEnabled"])
    (account,) = [u for u in realm["users"] if u.get("serviceAccountClientId") == "mltokens-admin"]
    assert sorted(account["clientRoles"]) == ["realm-management"]
    assert sorted(account["clientRoles"]["realm-management"]) == sorted(ADMIN_ROLES)  # what bootstrap grants


# -- both files imported into the test server and the real Keycloak (`keycloak_server` is parametrized) --


@pytest.fixture
def imported(
    keycloak_server: KeycloakServerInfo,  # noqa: F811
    realm: dict[str, Any],
    people: dict[str, Any],
) -> Iterator[tuple[str, str]]:
    """Both exports imported under fresh names, as Keycloak's --import-realm would: (ML realm, users' realm)."""
    suffix = uuid.uuid4().hex[:10]
    names = (f"deploy-{suffix}", f"people-{suffix}")
    master = keycloak_server.admin()
    for export, name in zip((realm, people), names, strict=True):
        master.create_realm({**export, "realm": name})
    try:
        yield names
    finally:
        for name in names:
            master.delete_realm(realm_name=name)


def issuer_settings(
    settings: Settings,
    server: KeycloakServerInfo,
    realms: tuple[str, str],
    principal: str,
) -> Settings:
    """The issuer's settings in deploy/compose.yml: the ML realm and the users' realm `realms`, logged in
    to the master realm as `principal` (password "issuer-pw")."""
    ml_realm, users_realm = realms
    return settings.replace(
        issuer="keycloak",
        keycloak_server_url=server.url,
        keycloak_realm=ml_realm,
        keycloak_users_realm=users_realm,
        keycloak_admin_realm="master",
        keycloak_admin_username=principal,
        keycloak_admin_password="issuer-pw",
    )


@pytest.fixture
def realm_settings(
    settings: Settings,
    keycloak_server: KeycloakServerInfo,  # noqa: F811
    imported: tuple[str, str],
) -> Iterator[Settings]:
    """CKAN's settings in deploy/compose.yml: owners in the users' realm, the issuer logged in as
    the least-privilege master-realm user keycloak-setup makes."""
    ml_realm, users_realm = imported
    principal = f"mltokens-issuer-{uuid.uuid4().hex[:6]}"
    master = keycloak_server.admin()
    user_id = add_issuer_user(master, principal, "issuer-pw", ml_realm, users_realm)
    two = issuer_settings(settings, keycloak_server, imported, principal)
    two.check()
    try:
        yield two
    finally:
        master.delete_user(user_id)


def test_bootstrap_finds_nothing_to_do_in_the_imported_realms(
    keycloak_server: KeycloakServerInfo,  # noqa: F811
    realm_settings: Settings,
) -> None:
    admin = keycloak_server.admin()
    assert bootstrap(admin, realm_settings, realm_settings.grantable_roles) == []


def test_a_max_ttl_token_from_the_imported_realm_is_not_cut(realm_settings: Settings, store: Store) -> None:
    """alice and bob of the users' realm own tokens that are clients of the ML realm, at full length."""
    lifecycle = Lifecycle(realm_settings, store, KeycloakIssuer(realm_settings, utcnow))
    assert lifecycle.grantable_roles(Owner("u-bob", "bob")) == ["model:sentiment:predict"]
    issued = lifecycle.create(
        Owner("u-alice", "alice"), "long job", ["model:sentiment:predict"], realm_settings.max_ttl, Actor.operator()
    )
    claims = jwt.decode(issued.secret.removeprefix("mlt_"), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] >= realm_settings.max_ttl.total_seconds() - 60
    assert claims["iss"].endswith(f"/realms/{realm_settings.keycloak_realm}")
    assert realm_settings.audience in (claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]])
    with pytest.raises(RolesNotAllowed):  # bob holds predict only
        lifecycle.create(Owner("u-bob", "bob"), "escalate", ["model:sentiment:train"], None, Actor.operator())


def test_a_human_login_gets_the_users_realms_short_session(
    keycloak_server: KeycloakServerInfo,  # noqa: F811
    imported: tuple[str, str],
    people: dict[str, Any],
) -> None:
    """alice logs in to the users' realm (through a test-only password-grant client): her session
    ends after the users' realm's idle timeout, not after the ML realm's 100 days."""
    _, users_realm = imported
    keycloak_server.admin(users_realm).create_client(
        {
            "clientId": "login-test",
            "publicClient": True,
            "directAccessGrantsEnabled": True,
            "standardFlowEnabled": False,
        }
    )
    alice = next(u for u in people["users"] if u["username"] == "alice")
    login = KeycloakOpenID(server_url=keycloak_server.url, realm_name=users_realm, client_id="login-test")
    tokens = login.token("alice", alice["credentials"][0]["value"])
    idle = people["ssoSessionIdleTimeout"]
    assert idle - 60 <= tokens["refresh_expires_in"] <= idle  # the session's remaining life: the idle timeout
    refresh = jwt.decode(tokens["refresh_token"], options={"verify_signature": False})
    assert refresh["exp"] - refresh["iat"] <= idle
    assert keycloak_server.admin().get_realm(users_realm)["ssoSessionMaxLifespan"] == people["ssoSessionMaxLifespan"]


@pytest.mark.parametrize("keycloak_server", [REAL], indirect=True)
def test_the_compose_setup_script_makes_the_least_privilege_user(
    keycloak_server: KeycloakServerInfo,  # noqa: F811
    imported: tuple[str, str],
    settings: Settings,
) -> None:
    """deploy/keycloak/issuer-user.sh, run twice (compose may rerun it) with Keycloak's own kcadm.sh
    on the real server, leaves a master user holding exactly what the issuer needs, and that user
    can do the issuer's work (bootstrap finds nothing to do logged in as it)."""
    ml_realm, users_realm = imported
    principal = f"mltokens-issuer-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "KCADM": str(KEYCLOAK_HOME / "bin" / "kcadm.sh"),
        "KEYCLOAK_URL": keycloak_server.url,
        "KC_BOOTSTRAP_ADMIN_USERNAME": keycloak_server.admin_user,
        "KC_BOOTSTRAP_ADMIN_PASSWORD": keycloak_server.admin_password,
        "ML_REALM": ml_realm,
        "USERS_REALM": users_realm,
        "ISSUER_USERNAME": principal,
        "ISSUER_PASSWORD": "issuer-pw",
    }
    master = keycloak_server.admin()
    try:
        for _ in range(2):
            run = subprocess.run(["bash", str(SETUP_SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stdout + run.stderr
        user_id = master.get_user_id(principal)
        held = {
            name: {r["name"] for r in master.get_client_roles_of_user(user_id, master.get_client_id(f"{name}-realm"))}
            for name in (ml_realm, users_realm)
        }
        assert held == {ml_realm: set(ADMIN_ROLES), users_realm: set(USERS_REALM_ROLES)}
        assert {r["name"] for r in master.get_realm_roles_of_user(user_id)} <= {"default-roles-master"}
        two = issuer_settings(settings, keycloak_server, imported, principal)
        assert KeycloakIssuer(two, utcnow).grantable_roles(Owner("u-bob", "bob")) == {"model:sentiment:predict"}
    finally:
        if user_id := master.get_user_id(principal):
            master.delete_user(user_id)
