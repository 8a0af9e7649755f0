"""The one CSRF check of the plugin, for its views and its writing actions.

CKAN 2.12 relies on Flask-WTF's `CSRFProtect`, with two gaps that matter here:

- `ckan_before_request` calls `csrf.exempt(<view>)` whenever `g.login_via_auth_header`
  is set, and `load_user_from_request` sets it for every *anonymous* request too. The
  exemption is process-wide and permanent, so after one anonymous request to
  `/api/action/...` (or to one of our pages), the action API (or that page) accepts
  cookie-session POSTs without a CSRF token.
- `CSRFProtect` checks only POST/PUT/PATCH/DELETE requests (the action API refuses a
  writing action on a GET itself, but another view calling an action might not).

CKAN 2.11 exempts plugins' views altogether by default (`ckan.csrf_protection.ignore_extensions`;
see compat.py). So every request whose user came from the session cookie must be a POST (or another
state-changing method) with a valid CSRF token before a writing action runs. Requests
authenticated by an API token in the Authorization header, which a browser never sends
across sites on its own, keep working as before; so do calls without a request (CLI,
jobs) and internal calls that bypass authorization (`ignore_auth`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import ckan.plugins.toolkit as tk
from ckan.config.middleware.flask_app import csrf
from flask import current_app, g, has_request_context, request
from flask_wtf.csrf import CSRFError

F = TypeVar("F", bound=Callable[..., Any])

REFUSED = "This request needs a valid CSRF token (or an API token in the Authorization header)."


def cookie_session() -> bool:
    """Whether the current request's user was identified by CKAN's session cookie."""
    return has_request_context() and tk.current_user.is_authenticated and not g.get("login_via_auth_header")


def check() -> None:
    """Refuse a cookie-session request without a valid CSRF token: a `CSRFError` (400).

    A request that is not a cookie session, or a site with `WTF_CSRF_ENABLED = false`,
    passes.
    """
    if not cookie_session() or not current_app.config.get("WTF_CSRF_ENABLED", True):
        return
    if request.method not in current_app.config["WTF_CSRF_METHODS"]:
        raise CSRFError("A change needs a POST request.")
    csrf.protect()


def required(action: F) -> F:
    """Decorate a writing action: refused (NotAuthorized, 403 in the API) for a cookie session without CSRF token."""

    @functools.wraps(action)
    def wrapper(*args: Any) -> Any:
        context = args[-2]  # (context, data_dict), or (original, context, data_dict) when chained
        if not context.get("ignore_auth"):
            try:
                check()
            except CSRFError:
                raise tk.NotAuthorized(tk._(REFUSED)) from None
        return action(*args)

    return wrapper  # type: ignore[return-value]
