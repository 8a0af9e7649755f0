"""Keycloak issuer tests run against the Keycloak-compatible test server, a realm per test."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
from keycloak import KeycloakAdmin

from testing.keycloak_server.fixtures import KeycloakServerInfo, keycloak_realm, keycloak_server  # noqa: F401
from token_service.config import Settings
from token_service.issuers.keycloak import KeycloakIssuer
from token_service.issuers.keycloak_bootstrap import admin_secret, bootstrap
from token_service.lifecycle import Lifecycle

ROLES = ("model:sentiment:predict", "model:sentiment:train", "model:vision:predict")


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
        issuer="keycloak", keycloak_server_url=keycloak_server.url, keycloak_realm=keycloak_realm,
        issuer_url=f"{keycloak_server.url}/realms/{keycloak_realm}", max_ttl=settings.max_ttl,
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
