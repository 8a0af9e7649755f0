"""Template helpers for the ML API token pages."""

from __future__ import annotations

import json
import logging
import math
import shlex
from datetime import UTC, datetime, time, timedelta
from typing import Any

import ckan.plugins.toolkit as tk

from token_service.errors import TokenServiceError

from . import catalogue, once, service

log = logging.getLogger(__name__)

PRESET_DAYS = (1, 7, 30, 90, 180, 365)


def _span(ttl: timedelta) -> str:
    """A duration in whole days, else hours (1.5 hours), else whole minutes, else seconds."""
    seconds = ttl.total_seconds()
    if seconds >= 86400 and seconds % 86400 == 0:
        days = int(seconds // 86400)
        return tk.ungettext("{n} day", "{n} days", days).format(n=days)
    if seconds >= 3600:
        hours = seconds / 3600
        return tk.ungettext("{n} hour", "{n} hours", math.ceil(hours)).format(n=f"{hours:g}")
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return tk.ungettext("{n} minute", "{n} minutes", minutes).format(n=minutes)
    return tk.ungettext("{n} second", "{n} seconds", int(seconds)).format(n=int(seconds))


def mltokens_expiry_presets() -> list[dict[str, Any]]:
    """Lifetimes offered on the create form: common ones up to the maximum, and the default."""
    settings = service.settings()
    ttls = {timedelta(days=d) for d in PRESET_DAYS if timedelta(days=d) <= settings.max_ttl}
    ttls |= {settings.default_ttl, settings.max_ttl}
    return [
        {"value": str(int(ttl.total_seconds())), "text": _span(ttl), "selected": ttl == settings.default_ttl}
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


def mltokens_rotate_grace() -> str:
    """How long a rotated token's previous string keeps working, as text (e.g. "15 minutes")."""
    seconds = int(service.settings().rotate_grace.total_seconds())
    for size, one, many in (
        (86400, "{n} day", "{n} days"),
        (3600, "{n} hour", "{n} hours"),
        (60, "{n} minute", "{n} minutes"),
    ):
        if seconds >= size and seconds % size == 0:
            return tk.ungettext(one, many, seconds // size).format(n=seconds // size)
    return tk.ungettext("{n} second", "{n} seconds", seconds).format(n=seconds)


def mltokens_limit_bounds() -> dict[str, Any]:
    """The largest rate limit and daily quota a token may have (the operator's bounds)."""
    settings = service.settings()
    return {"rate_limit": settings.max_token_rate_limit, "daily_quota": settings.max_token_daily_quota}


def mltokens_token_kinds() -> list[str]:
    """The token kinds the issuer offers: `access_token`, and with Keycloak `client_credentials`."""
    return sorted(service.lifecycle().issuer.token_kinds)


def mltokens_token_endpoint() -> str:
    """Keycloak's token endpoint as users reach it, where a client-credentials token fetches access tokens."""
    return service.token_endpoint()


SECRET_VARIABLE = "ML_CLIENT_SECRET"  # not MLTOKENS_*: the mltokens CLI refuses unknown variables of its own
EXAMPLE_BODY = '{"text": "I love this!"}'
_JSON_TOKEN = """python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'"""


def mltokens_client_credentials_help(token: dict[str, Any]) -> dict[str, str]:
    """What the box of a new client-credentials token shows: a shell session and a Python program
    that fetch an access token and call the model API with it, and how long each access token lives.

    The secret is in neither: both read it from the environment variable `ML_CLIENT_SECRET`, and
    the shell sends it to curl on standard input (`--data-urlencode client_secret@-`), so it is
    on no command line. Values are quoted for their language (shell, Python); the template
    escapes the whole for HTML.
    """
    endpoint, model = mltokens_token_endpoint(), mltokens_model_api_url()
    client_id = token["client_id"]
    fetch = (
        f'JWT=$(printf %s "${SECRET_VARIABLE}" | curl -sS --fail -d grant_type=client_credentials '
        f"--data-urlencode client_id={shlex.quote(client_id)} --data-urlencode client_secret@- "
        f"{shlex.quote(endpoint)} | {_JSON_TOKEN})"
    )
    shell = "\n".join(
        [
            "# " + tk._("Paste the client secret (it is not shown), then press Enter:"),
            f"read -rs {SECRET_VARIABLE} && export {SECRET_VARIABLE}",
            "# " + tk._("Fetch an access token (a JWT) with the client id and secret:"),
            fetch,
            "# " + tk._("Call the model API with it:"),
            f'curl -H "Authorization: Bearer $JWT" -H "Content-Type: application/json" '
            f"-d {shlex.quote(EXAMPLE_BODY)} {shlex.quote(model)}",
        ]
    )
    python = "\n".join(
        [
            "# pip install authlib requests",
            "import os",
            "",
            "from authlib.integrations.requests_client import OAuth2Session",
            "",
            "session = OAuth2Session(",
            f"    {client_id!r},",
            f"    os.environ[{SECRET_VARIABLE!r}],",
            f"    token_endpoint={endpoint!r},",
            '    grant_type="client_credentials",',
            ")",
            "session.fetch_token()  # " + tk._("fetches a new access token by itself once this one expires"),
            f"answer = session.post({model!r}, json={json.loads(EXAMPLE_BODY)!r})",
            "print(answer.status_code, answer.text)",
        ]
    )
    settings = service.settings()
    lifetime = datetime.fromisoformat(token["expires_at"]) - datetime.fromisoformat(token["issued_at"])
    return {
        "shell": shell,
        "python": python,
        "lifespan": _span(min(settings.client_credentials_lifespan, lifetime)),
        "variable": SECRET_VARIABLE,
    }


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
