"""Issuers mint tokens: `local` (embedded default) and `keycloak` (production)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from ..config import Settings
from ..errors import ConfigError
from .base import ORGANIZATION, OWNER_KINDS, USER, Grant, Issuer, Minted, Owner

if TYPE_CHECKING:  # the store (SQLAlchemy, Alembic) is loaded by whoever makes one
    from ..store import Store


def make_issuer(settings: Settings, store: Store, clock: Callable[[], datetime]) -> Issuer:
    if settings.issuer == "local":
        from .local import LocalIssuer

        return LocalIssuer(settings, store, clock)
    if settings.issuer == "keycloak":
        try:
            from .keycloak import KeycloakIssuer
        except ImportError as exc:
            raise ConfigError("issuer: keycloak needs python-keycloak (pip install 'mltokens[keycloak]')") from exc
        return KeycloakIssuer(settings, clock)
    raise ConfigError(f"issuer: {settings.issuer!r} is not available in this installation")


__all__ = ["ORGANIZATION", "OWNER_KINDS", "USER", "Grant", "Issuer", "Minted", "Owner", "make_issuer"]
