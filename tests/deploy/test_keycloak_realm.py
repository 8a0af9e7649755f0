"""docker/keycloak/mltokens-realm.json: the realm export the compose Keycloak imports."""
from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from tests.deploy.conftest import DOCKER
from token_service.config import Settings
from token_service.issuers.keycloak_bootstrap import ADMIN_ROLES, SESSION_HEADROOM

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
