"""A Keycloak-compatible test server: OIDC endpoints and the Admin REST API that
python-keycloak uses, with Keycloak's shapes, status codes and error bodies."""

from .server import KeycloakTestServer

__all__ = ["KeycloakTestServer"]
