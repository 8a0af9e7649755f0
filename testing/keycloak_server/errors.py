"""Keycloak's error bodies, raised as exceptions and rendered by the app.

Keycloak 26 maps a JAX-RS ``WebApplicationException`` to ``{"error": <message>}``
(KeycloakErrorHandler), answers duplicates from admin resources with
``{"errorMessage": ...}`` (ErrorResponse.exists) and OAuth endpoint failures with
``{"error": <code>, "error_description": <text>}``.
"""

from __future__ import annotations

from typing import Any


class KeycloakHTTPError(Exception):
    """An HTTP error answer with a JSON body (or none) and optional headers."""

    def __init__(
        self,
        status: int,
        body: dict[str, Any] | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.headers = headers or {}


def not_found(message: str) -> KeycloakHTTPError:
    """``NotFoundException(message)`` as rendered by KeycloakErrorHandler."""
    return KeycloakHTTPError(404, {"error": message})


def conflict(message: str) -> KeycloakHTTPError:
    """``ErrorResponse.exists(message)``: 409 with ``errorMessage``."""
    return KeycloakHTTPError(409, {"errorMessage": message})


def bad_request(message: str) -> KeycloakHTTPError:
    """``ErrorResponse.error(message, BAD_REQUEST)``: 400 with ``errorMessage``."""
    return KeycloakHTTPError(400, {"errorMessage": message})


def web_error(status: int, message: str) -> KeycloakHTTPError:
    """A ``WebApplicationException`` whose message becomes the ``error`` field."""
    return KeycloakHTTPError(status, {"error": message})


def unauthorized() -> KeycloakHTTPError:
    """Admin API call without a valid bearer token."""
    return web_error(401, "HTTP 401 Unauthorized")


def forbidden() -> KeycloakHTTPError:
    """Admin API call whose token lacks the needed admin role.

    Keycloak 26.7.3 answers ``HTTP 403 Forbidden`` (checked against the real server by
    tests/keycloak/differential; older releases answered ``unknown_error``)."""
    return web_error(403, "HTTP 403 Forbidden")


def oauth_error(status: int, error: str, description: str | None = None) -> KeycloakHTTPError:
    """An OAuth 2.0 error answer from a protocol endpoint."""
    body: dict[str, Any] = {"error": error}
    if description is not None:
        body["error_description"] = description
    return KeycloakHTTPError(status, body)
