"""Template helpers for the ML API token pages."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import ckan.plugins.toolkit as tk

from . import service

PRESET_DAYS = (1, 7, 30, 90, 180, 365)


def _days(ttl: timedelta) -> str:
    days = ttl.total_seconds() / 86400
    if days >= 1 and days == int(days):
        return tk.ungettext("{n} day", "{n} days", int(days)).format(n=int(days))
    hours = ttl.total_seconds() / 3600
    return tk.ungettext("{n} hour", "{n} hours", int(hours)).format(n=f"{hours:g}")


def mltokens_expiry_presets() -> list[dict[str, Any]]:
    """Lifetimes offered on the create form: common ones up to the maximum, and the default."""
    settings = service.settings()
    ttls = {timedelta(days=d) for d in PRESET_DAYS if timedelta(days=d) <= settings.max_ttl}
    ttls |= {settings.default_ttl, settings.max_ttl}
    return [
        {"value": str(int(ttl.total_seconds())), "text": _days(ttl), "selected": ttl == settings.default_ttl}
        for ttl in sorted(ttls)
    ]


def mltokens_expiry_date_bounds() -> dict[str, str]:
    """The earliest and latest expiry dates (each meaning 00:00 UTC) the maximum lifetime allows."""
    now = datetime.now(UTC)
    return {
        "min": (now + timedelta(days=1)).date().isoformat(),
        "max": (now + service.settings().max_ttl).date().isoformat(),
    }


def mltokens_token_kinds() -> list[str]:
    """The token kinds the issuer offers: `access_token`, and with Keycloak `client_credentials`."""
    return sorted(service.lifecycle().issuer.token_kinds)


def mltokens_token_endpoint() -> str:
    """Keycloak's token endpoint, where a client-credentials token's client fetches access tokens."""
    s = service.settings()
    return f"{s.keycloak_server_url.rstrip('/')}/realms/{s.keycloak_realm}/protocol/openid-connect/token"


def mltokens_model_api_url() -> str:
    return tk.config.get(service.PREFIX + "model_api_url")


def mltokens_expires_soon(token: dict[str, Any]) -> bool:
    """An active token that expires within the configured warning period."""
    if token["status"] != "active":
        return False
    return datetime.fromisoformat(token["expires_at"]) - datetime.now(UTC) <= service.expiry_warning()


def mltokens_when(moment: str | None) -> str:
    """A stored ISO date-time as CKAN renders dates, with hours (UTC)."""
    return tk.h.render_datetime(datetime.fromisoformat(moment), with_hours=True) if moment else ""
