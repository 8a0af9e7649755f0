"""Template helpers for the ML API token pages."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta
from typing import Any

import ckan.plugins.toolkit as tk

from token_service.errors import TokenServiceError

from . import catalogue, once, service

log = logging.getLogger(__name__)

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
    """The earliest and latest expiry dates (each meaning 00:00 UTC): ISO for the date field, and as text."""
    now = datetime.now(UTC)
    first, last = (now + timedelta(days=1)).date(), (now + service.settings().max_ttl).date()
    max_text = tk.h.render_datetime(datetime.combine(last, time(), UTC))
    return {"min": first.isoformat(), "max": last.isoformat(), "max_text": max_text}


def mltokens_form_nonce() -> str:
    """A fresh nonce for a create or renew form: the server acts once per nonce (see `once`)."""
    return once.new_nonce()


def mltokens_limit_bounds() -> dict[str, Any]:
    """The largest rate limit and daily quota a token may have (the operator's bounds)."""
    settings = service.settings()
    return {"rate_limit": settings.max_token_rate_limit, "daily_quota": settings.max_token_daily_quota}


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
    """An active token in the last quarter of its lifetime, and within the configured warning period.

    The quarter keeps a short-lived token (7 days, with the default 7-day warning) from
    being "expiring soon" from its first second: it is flagged in its last 42 hours.
    """
    if token["status"] != "active":
        return False
    expires_at = datetime.fromisoformat(token["expires_at"])
    lifetime = expires_at - datetime.fromisoformat(token["issued_at"])
    return expires_at - datetime.now(UTC) <= min(service.expiry_warning(), lifetime / 4)


def mltokens_when(moment: str | None) -> str:
    """A stored ISO date-time as CKAN renders dates, with hours (UTC)."""
    return tk.h.render_datetime(datetime.fromisoformat(moment), with_hours=True) if moment else ""


def mltokens_model_api(pkg_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The dataset page's "Model API" section, or None when the dataset describes no model API.

    Endpoints are at the gateway address of `model_api_url` (its part before /v1/models/).
    For a logged-in viewer: their own active tokens holding one of the model's roles
    (`tokens` is None when the token service cannot be reached), and the token form's address
    with those roles preselected.
    """
    api = catalogue.model_api(pkg_dict)
    if api is None:
        return None
    base = catalogue.gateway_base(mltokens_model_api_url())
    section: dict[str, Any] = {
        "model_id": api.model_id,
        "endpoints": [
            {"operation": operation, "role": role, "url": f"{base}/v1/models/{api.model_id}/{operation}"}
            for operation, role in zip(api.operations, api.roles, strict=True)
        ],
        "tokens": [],
        "create_url": None,
    }
    user = tk.current_user
    if user.is_authenticated:
        section["create_url"] = tk.h.url_for("mltokens.index", id=user.name, roles=list(api.roles))
        try:
            mine = tk.get_action("mltoken_list")(
                {"user": user.name, "auth_user_obj": user}, {"user": user.id, "include_inactive": False}
            )
        except TokenServiceError:
            log.exception("the tokens of %s for model %s could not be listed", user.id, api.model_id)
            section["tokens"] = None
        else:
            section["tokens"] = [token for token in mine if set(token["roles"]) & set(api.roles)]
    return section


CHART_WIDTH, CHART_HEIGHT = 120, 28


def mltokens_chart(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Bars of a server-rendered SVG chart of a token's daily use (mltoken_usage's `daily`), or None.

    Numbers only: the template writes them into the SVG, and each bar's title (date and
    count) is escaped there like any text.
    """
    if not usage or not usage.get("daily"):
        return None
    daily = usage["daily"]
    peak = max(day["count"] for day in daily)
    step = CHART_WIDTH / len(daily)
    bars = []
    for i, day in enumerate(daily):
        height = round(day["count"] / peak * (CHART_HEIGHT - 2), 1) if peak else 0
        if day["count"] and height < 1:
            height = 1  # a day with use is never invisible
        bars.append(
            {
                "x": round(i * step, 2),
                "y": round(CHART_HEIGHT - height, 1),
                "width": round(max(step - 1, 1), 2),
                "height": height,
                "date": day["date"],
                "count": day["count"],
            }
        )
    total = sum(day["count"] for day in daily)
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "bars": bars,
        "peak": peak,
        "total": total,
        "days": len(daily),
    }
