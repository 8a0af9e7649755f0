"""Keycloak issuer tests, each in a realm of its own, against both backends: the
Keycloak-compatible test server ("stand-in") and the real Keycloak ("real").

`keycloak_server` is parametrized. "Keycloak down" is a closed port, so those tests run
against both; a test that needs a fault only the stand-in could make would restrict it
with `@pytest.mark.parametrize("keycloak_server", [STANDIN], indirect=True)`. Every
real-Keycloak test is in the xdist group "keycloak-real", so one worker runs them all and
one server starts per session.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from keycloak import KeycloakAdmin

from testing.keycloak_server.fixtures import KeycloakServerInfo, keycloak_realm  # noqa: F401
from token_service.config import Settings
from token_service.issuers.keycloak import KeycloakIssuer
from token_service.issuers.keycloak_bootstrap import ADMIN_ROLES, admin_secret, bootstrap
from token_service.lifecycle import Lifecycle

STANDIN = "stand-in"
REAL = "real"
BACKENDS = [STANDIN, pytest.param(REAL, marks=pytest.mark.xdist_group("keycloak-real"))]


@pytest.fixture(params=BACKENDS)
def keycloak_server(request: pytest.FixtureRequest) -> KeycloakServerInfo:
    """The Keycloak a test runs against; the real one starts on first use."""
    return request.getfixturevalue("standin_keycloak_server" if request.param == STANDIN else "real_keycloak_server")


ROLES = ("model:sentiment:predict", "model:sentiment:train", "model:vision:predict")
#: What the issuer's master-realm user needs over the users' realm when that is another realm
#: (docs/keycloak.md, "One realm or two"): find an owner and read their realm and client roles.
USERS_REALM_ROLES = ("view-users", "query-users", "view-clients")


def add_issuer_user(master: KeycloakAdmin, username: str, password: str, ml_realm: str, users_realm: str) -> str:
    """The issuer's least-privilege master-realm user for two realms: ADMIN_ROLES over the ML
    realm, only USERS_REALM_ROLES over the users' realm (deploy/keycloak/issuer-user.sh does the same)."""
    user_id = master.create_user(
        {
            "username": username,
            "enabled": True,
            "credentials": [{"type": "password", "value": password, "temporary": False}],
        }
    )
    for name, roles in ((ml_realm, ADMIN_ROLES), (users_realm, USERS_REALM_ROLES)):
        client = master.get_client_id(f"{name}-realm")
        master.assign_client_role(user_id, client, [master.get_client_role(client, role) for role in roles])
    return user_id


@dataclass
class Realm:
    name: str
    admin: KeycloakAdmin
    settings: Settings

    def add_user(self, username: str, roles: tuple[str, ...] = (), enabled: bool = True) -> str:
        user_id = self.admin.create_user({"username": username, "enabled": enabled})
        if roles:
            self.admin.assign_realm_roles(user_id, [self.admin.get_realm_role(r) for r in roles])
        return user_id


@pytest.fixture
def kc_settings(keycloak_server: KeycloakServerInfo, keycloak_realm: str, settings: Settings) -> Settings:  # noqa: F811
    """Settings for the Keycloak issuer, logged in as the bootstrapped service-account client."""
    admin = keycloak_server.admin()
    base = settings.replace(
        issuer="keycloak",
        keycloak_server_url=keycloak_server.url,
        keycloak_realm=keycloak_realm,
        # the `iss` of its tokens: the real Keycloak's public hostname, not the URL the issuer calls
        issuer_url=f"{keycloak_server.public_url}/realms/{keycloak_realm}",
        max_ttl=settings.max_ttl,
    )
    bootstrap(admin, base, ROLES)
    admin.change_current_realm(keycloak_realm)
    return base.replace(keycloak_admin_client_secret=admin_secret(admin, base))


@pytest.fixture
def realm(keycloak_server: KeycloakServerInfo, kc_settings: Settings) -> Realm:  # noqa: F811
    return Realm(kc_settings.keycloak_realm, keycloak_server.admin(kc_settings.keycloak_realm), kc_settings)


@pytest.fixture
def kc_issuer(kc_settings: Settings, clock) -> KeycloakIssuer:
    return KeycloakIssuer(kc_settings, clock)


@pytest.fixture
def kc_lifecycle(kc_settings: Settings, store, kc_issuer: KeycloakIssuer, clock) -> Lifecycle:
    return Lifecycle(kc_settings, store, kc_issuer, clock)
