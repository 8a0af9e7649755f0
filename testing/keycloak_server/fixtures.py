"""Pytest fixtures: a session-wide Keycloak test server and a fresh realm per test.

Use with ``pytest_plugins = ["testing.keycloak_server.fixtures"]`` in a conftest.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from keycloak import KeycloakAdmin

from .server import KeycloakTestServer


@dataclass(frozen=True)
class KeycloakServerInfo:
    """Where the test server listens and its master admin credentials.

    `url` is where tests call it (python-keycloak's `server_url`, the back channel);
    `public_url` is the base of the `iss` of its tokens: the same, unless the server has a
    `hostname` of its own (the real Keycloak of testing/real_keycloak.py has).
    """

    url: str
    host: str
    port: int
    admin_user: str
    admin_password: str
    public_url: str = ""

    def __post_init__(self) -> None:
        if not self.public_url:
            object.__setattr__(self, "public_url", self.url)

    def admin(self, realm_name: str = "master") -> KeycloakAdmin:
        """A python-keycloak admin logged into master, working on ``realm_name``."""
        admin = KeycloakAdmin(
            server_url=self.url,
            username=self.admin_user,
            password=self.admin_password,
            realm_name="master",
            user_realm_name="master",
        )
        admin.change_current_realm(realm_name)
        return admin


@pytest.fixture(scope="session")
def keycloak_server() -> Iterator[KeycloakServerInfo]:
    """A running Keycloak test server for the whole session."""
    server = KeycloakTestServer(admin_user="admin", admin_password="admin").start()
    try:
        yield KeycloakServerInfo(server.url, server.host, server.port, server.admin_user, server.admin_password)
    finally:
        server.stop()


@pytest.fixture
def keycloak_realm(keycloak_server: KeycloakServerInfo) -> Iterator[str]:
    """A fresh, enabled realm created through the Admin API; deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    admin = keycloak_server.admin()
    admin.create_realm(payload={"realm": name, "enabled": True})
    try:
        yield name
    finally:
        admin.delete_realm(realm_name=name)
