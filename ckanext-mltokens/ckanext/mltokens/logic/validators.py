"""Validators for the mltoken_* action schemas."""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import ckan.plugins.toolkit as tk

from token_service.config import DurationTooLong, parse_duration
from token_service.errors import ConfigError, InvalidInput
from token_service.lifecycle import MAX_OWNER_ID, check_text

# Shapes and types are checked here; the rules on values (lengths, characters, bounds,
# token kinds) are token_service's, which the CLI goes through as well.


def mltokens_duration(value: Any) -> timedelta:
    """A lifetime such as `30d`, `12h`, `45m` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (bool, float)):
        raise tk.Invalid(tk._("Give the lifetime as e.g. 30d, 12h or a number of seconds."))
    try:
        return parse_duration(value, "ttl")
    except DurationTooLong:
        raise tk.Invalid(tk._("The lifetime is longer than this site allows.")) from None
    except ConfigError:
        raise tk.Invalid(tk._("Give the lifetime as e.g. 30d, 12h or a number of seconds.")) from None


def mltokens_moment(value: Any) -> datetime:
    """An ISO 8601 date (meaning 00:00 UTC that day) or date-time (UTC when no offset is given)."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            text = value.strip()
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


MAX_IDS = 200  # token ids one bulk revocation may name


def mltokens_ids(value: Any) -> list[str]:
    """1 to MAX_IDS token ids: a list, or one string of ids separated by commas or spaces."""
    if isinstance(value, str):
        value = re.split(r"[,\s]+", value.strip())
    if not isinstance(value, (list, tuple)) or not all(isinstance(i, str) for i in value):
        raise tk.Invalid(tk._("Give the token ids as a list."))
    ids = list(dict.fromkeys(i.strip() for i in value if i.strip()))
    if not 0 < len(ids) <= MAX_IDS:
        raise tk.Invalid(tk._("Name between 1 and {n} tokens.").format(n=MAX_IDS))
    return ids


def mltokens_boolean(value: Any) -> bool:
    """JSON true/false, 1/0, or the words CKAN reads as booleans (true/false, yes/no, on/off…)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # not a word CKAN reads as a boolean
            return tk.asbool(value)
    raise tk.Invalid(tk._("Give true or false."))


def mltokens_user(value: Any) -> str:
    """A user name or id: text without control characters, so nothing odd reaches CKAN's user query."""
    try:
        return check_text(value, "user", "user name or id", MAX_OWNER_ID)
    except InvalidInput as exc:
        raise tk.Invalid(exc.message) from None


def mltokens_org(value: Any) -> str:
    """An organization name or id, checked like a user reference before it reaches CKAN's group query."""
    try:
        return check_text(value, "owner_org", "organization name or id", MAX_OWNER_ID)
    except InvalidInput as exc:
        raise tk.Invalid(exc.message) from None


def mltokens_days(value: Any) -> int:
    """A whole number of days (JSON number or digits); its range is token_service's check."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d{1,6}\s*", value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise tk.Invalid(tk._("Give the period as a whole number of days."))
