"""deploy/keycloak/mltokens-realm.json: the realm export the compose Keycloak imports.

Checked as data (against the settings and `mltokens keycloak bootstrap`'s constants) and
imported into the Keycloak-compatible test server and into the real Keycloak 26.7.3
(through the Admin API's realm import, the code path `--import-realm` takes too), where
bootstrap must find nothing to do and the Keycloak issuer must mint a full-length token
for a demo user."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import jwt
import pytest

from testing.keycloak_server.fixtures import KeycloakServerInfo
from tests.deploy.conftest import DOCKER
from tests.keycloak.conftest import keycloak_server  # noqa: F401
from token_service.config import Settings
from token_service.errors import RolesNotAllowed
from token_service.issuers import Owner
from token_service.issuers.keycloak import KeycloakIssuer
from token_service.issuers.keycloak_bootstrap import ADMIN_ROLES, SESSION_HEADROOM, bootstrap
from token_service.lifecycle import Actor, Lifecycle, utcnow
from token_service.store import Store

REALM_FILE = DOCKER / "keycloak" / "mltokens-realm.json"


@pytest.fixture(scope="module")
def realm() -> dict[str, Any]:
    return json.loads(REALM_FILE.read_text())


def test_session_max_fits_the_longest_token(realm: dict[str, Any]) -> None:
    """keycloak/keycloak#43410: a client-credentials token's exp is cut to SSO Session Max."""
    longest = Settings().max_ttl
    assert timedelta(seconds=realm["ssoSessionMaxLifespan"]) >= longest + SESSION_HEADROOM  # as bootstrap sets it
    client_max = realm.get("clientSessionMaxLifespan", 0)
    assert client_max == 0 or timedelta(seconds=client_max) > longest


def test_human_users_get_sane_idle_timeouts(realm: dict[str, Any]) -> None:
    """Session caps must fit the longest token, idle timeouts need not: Keycloak ends an idle
    browser session of alice or bob after ssoSessionIdleTimeout, and a client-credentials
    token's exp is not cut by it (shown on the real Keycloak by the max-TTL test below)."""
    assert 0 < realm["ssoSessionIdleTimeout"] <= 8 * 3600
    assert 0 <= realm.get("clientSessionIdleTimeout", 0) <= realm["ssoSessionIdleTimeout"]


def test_model_roles_and_audience_exist(realm: dict[str, Any]) -> None:
    defaults = Settings()
    roles = {r["name"] for r in realm["roles"]["realm"]}
    assert set(defaults.grantable_roles) <= roles
    clients = {c["clientId"]: c for c in realm["clients"]}
    assert defaults.audience in clients
    users = {u["username"]: u for u in realm["users"]}
    for user in users.values():
        assert set(user.get("realmRoles", [])) <= roles


def test_admin_service_account_matches_bootstrap(realm: dict[str, Any]) -> None:
    clients = {c["clientId"]: c for c in realm["clients"]}
    admin = clients["mltokens-admin"]
    assert admin["serviceAccountsEnabled"] and not admin["publicClient"]
    assert not (admin["standardFlowEnabled"] or admin["implicitFlowEnabled"] or admin["directAccessGrantsEnabled"])
    (account,) = [u for u in realm["users"] if u.get("serviceAccountClientId") == "mltokens-admin"]
    assert sorted(account["clientRoles"]) == ["realm-management"]
    assert sorted(account["clientRoles"]["realm-management"]) == sorted(ADMIN_ROLES)  # what bootstrap grants


# -- the realm file imported into the test server and the real Keycloak (`keycloak_server` is parametrized) --


@pytest.fixture
def imported_realm(keycloak_server: KeycloakServerInfo, realm: dict[str, Any]) -> Iterator[str]:  # noqa: F811
    """deploy/keycloak/mltokens-realm.json imported under a fresh name, as Keycloak's --import-realm would."""
    name = f"deploy-{uuid.uuid4().hex[:10]}"
    master = keycloak_server.admin()
    master.create_realm({**realm, "realm": name})
    try:
        yield name
    finally:
        master.delete_realm(realm_name=name)


@pytest.fixture
def realm_settings(
    settings: Settings,
    keycloak_server: KeycloakServerInfo,  # noqa: F811
    imported_realm: str,
    realm: dict[str, Any],
) -> Settings:
    """CKAN's settings in deploy/compose.yml: the issuer logs in as mltokens-admin with the file's secret."""
    admin_client = next(c for c in realm["clients"] if c["clientId"] == "mltokens-admin")
    return settings.replace(
        issuer="keycloak",
        keycloak_server_url=keycloak_server.url,
        keycloak_realm=imported_realm,
        keycloak_admin_client_id=admin_client["clientId"],
        keycloak_admin_client_secret=admin_client["secret"],
    )


def test_bootstrap_finds_nothing_to_do_in_the_imported_realm(
    keycloak_server: KeycloakServerInfo,  # noqa: F811
    realm_settings: Settings,
) -> None:
    admin = keycloak_server.admin()
    assert bootstrap(admin, realm_settings, realm_settings.grantable_roles) == []


def test_a_max_ttl_token_from_the_imported_realm_is_not_cut(realm_settings: Settings, store: Store) -> None:
    lifecycle = Lifecycle(realm_settings, store, KeycloakIssuer(realm_settings, utcnow))
    issued = lifecycle.create(
        Owner("u-alice", "alice"), "long job", ["model:sentiment:predict"], realm_settings.max_ttl, Actor.operator()
    )
    claims = jwt.decode(issued.secret.removeprefix("mlt_"), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] >= realm_settings.max_ttl.total_seconds() - 60
    assert realm_settings.audience in (claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]])
    with pytest.raises(RolesNotAllowed):  # bob holds predict only
        lifecycle.create(Owner("u-bob", "bob"), "escalate", ["model:sentiment:train"], None, Actor.operator())
