"""Validators for the mltoken_* action schemas."""
from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import ckan.plugins.toolkit as tk

from token_service.config import parse_duration
from token_service.errors import ConfigError


def mltokens_duration(value: Any) -> timedelta:
    """A lifetime such as `30d`, `12h`, `45m` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (bool, float)):
        raise tk.Invalid(tk._("Give the lifetime as e.g. 30d, 12h or a number of seconds."))
    try:
        return parse_duration(value, "ttl")
    except ConfigError:
        raise tk.Invalid(tk._("Give the lifetime as e.g. 30d, 12h or a number of seconds.")) from None


def mltokens_moment(value: Any) -> datetime:
    """An ISO 8601 date (meaning 00:00 UTC that day) or date-time (UTC when no offset is given)."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            text = str(value).strip()
            moment = (
                datetime.combine(date.fromisoformat(text), datetime.min.time())
                if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text)
                else datetime.fromisoformat(text)
            )
        except ValueError:
            raise tk.Invalid(tk._("Give the expiry as a date (YYYY-MM-DD) or an ISO 8601 date-time.")) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def mltokens_roles(value: Any) -> list[str]:
    """A list of role names, or one string of names separated by commas or spaces."""
    if isinstance(value, str):
        value = re.split(r"[,\s]+", value)
    if not isinstance(value, (list, tuple)) or not all(isinstance(r, str) for r in value):
        raise tk.Invalid(tk._("Give the roles as a list of role names."))
    return [r.strip() for r in value if r.strip()]
