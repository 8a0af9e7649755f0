"""Fixtures of the Keycloak test server for its own tests."""

from ..fixtures import keycloak_realm, keycloak_server

__all__ = ["keycloak_realm", "keycloak_server"]
