"""Web pages: the "ML API tokens" tab of a user's page and the sysadmin token page.

A new token string is rendered into the response to the POST that made it (never
into the session, a redirect or a cache) and is not shown again.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import ckan.plugins.toolkit as tk
from ckan.types import Context, Response

# CKAN's private helper for the user page's variables; ckanext-activity uses it the same way.
from ckan.views.user import _extra_template_variables
from flask import Blueprint, make_response

from token_service.errors import TokenServiceError

from . import csrf

log = logging.getLogger(__name__)
bp = Blueprint("mltokens", __name__)

SERVICE_DOWN = "The token service could not complete the request; nothing was changed. Please try again later."


def _csrf_checked(view: Callable[..., Response]) -> Callable[..., Response]:
    """Check the CSRF token of every cookie-session POST (see `csrf`: CKAN may have exempted the view)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        if tk.request.method == "POST":
            csrf.check()
        return view(*args, **kwargs)

    return wrapper


def _context() -> Context:
    return {"user": tk.current_user.name, "auth_user_obj": tk.current_user}


def _flash_errors(error_dict: dict[str, Any]) -> None:
    for messages in error_dict.values():
        for message in messages if isinstance(messages, list) else [messages]:
            tk.h.flash_error(message)


def _call(action: str, data_dict: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """Run an action for the current user: (result, None) or (None, field errors), all flashed.

    Not found and not authorized are flashed with the action's own (generic)
    message; service failures get a generic message and are logged.
    """
    try:
        return tk.get_action(action)(_context(), data_dict), None
    except tk.ValidationError as exc:
        _flash_errors(exc.error_dict)
        return None, exc.error_dict
    except tk.ObjectNotFound as exc:
        tk.h.flash_error(str(exc) or tk._("Not found."))
    except tk.NotAuthorized as exc:
        tk.h.flash_error(str(exc) or tk._("Not authorized."))
    except TokenServiceError:
        log.exception("%s failed", action)
        tk.h.flash_error(tk._(SERVICE_DOWN))
    return None, {}


def _no_store(body: str) -> Response:
    """A page that must not be cached: it may carry a token string."""
    response = make_response(body)
    response.headers["Cache-Control"] = "no-store"
    return response


def _user_page(id: str, **extra: Any) -> Response:
    """The token tab of user `id`, for the user or a sysadmin; a service failure is a flashed message."""
    try:
        tk.check_access("mltoken_list", _context(), {"user": id})
    except tk.NotAuthorized:
        return tk.abort(403, tk._("Not authorized to see this page"))
    extra_vars = _extra_template_variables(_context(), {"id": id, "user_obj": tk.current_user})
    tokens, _errors = _call("mltoken_list", {"user": id})
    roles, _errors = _call("mltoken_roles_list", {}) if extra_vars["is_myself"] else ([], None)
    extra_vars.update(tokens=tokens or [], roles=roles or [], data={}, errors={}, created=None)
    extra_vars.update(extra)
    return _no_store(tk.render("mltokens/user_tokens.html", extra_vars))


def _own_page_or_403(id: str) -> None:
    user = tk.current_user
    if not user.is_authenticated or id not in (user.id, user.name):
        tk.abort(403, tk._("You can only manage your own ML API tokens here."))


def _expiry(form: Any) -> dict[str, Any]:
    """The expiry fields of a form as action parameters: a preset lifetime or a date."""
    if form.get("expiry") == "date":
        return {"expires": form.get("expires_on", "")}
    return {"ttl": form.get("expiry")} if form.get("expiry") else {}


@bp.route("/ml-tokens")
def mine() -> Response:
    """The caller's own token tab: a stable address for documentation and `ckan.auth.route_after_login`."""
    if not tk.current_user.is_authenticated:
        return tk.redirect_to("user.login", next=tk.h.url_for("mltokens.mine"))
    return tk.redirect_to("mltokens.index", id=tk.current_user.name)


@bp.route("/user/<id>/ml-tokens", methods=["GET"])
def index(id: str) -> Response:
    return _user_page(id)


@bp.route("/user/<id>/ml-tokens", methods=["POST"])
@_csrf_checked
def create(id: str) -> Response:
    _own_page_or_403(id)
    form = tk.request.form
    roles = form.getlist("roles")
    data = {"name": form.get("name", ""), "roles": roles, **_expiry(form)}
    data.update({key: form[key] for key in ("rate_limit", "daily_quota", "kind") if form.get(key)})
    created, errors = _call("mltoken_create", data)
    if created:
        tk.h.flash_success(tk._("Token created. Copy it now: it will not be shown again."))
        return _user_page(id, created=created)
    return _user_page(id, data={**form.to_dict(), "roles": roles}, errors=errors)


@bp.route("/user/<id>/ml-tokens/<token_id>/renew", methods=["POST"])
@_csrf_checked
def renew(id: str, token_id: str) -> Response:
    _own_page_or_403(id)
    created, _errors = _call("mltoken_renew", {"id": token_id})
    if created:
        tk.h.flash_success(tk._("Token renewed. Copy the new token now; the old one no longer works."))
        return _user_page(id, created=created)
    return tk.redirect_to("mltokens.index", id=id)


def _revoke(token_id: str, page: str, back: Response) -> Response:
    """GET asks for confirmation (also without JavaScript); POST revokes."""
    if tk.request.method == "GET":
        token, _errors = _call("mltoken_show", {"id": token_id})
        if not token:
            return back
        return tk.render("mltokens/confirm_revoke.html", {"token": token, "action": page})
    revoked, _errors = _call("mltoken_revoke", {"id": token_id, "reason": tk.request.form.get("reason") or None})
    if revoked:
        tk.h.flash_success(tk._('Token "{name}" revoked.').format(name=revoked["name"]))
    return back


@bp.route("/user/<id>/ml-tokens/<token_id>/revoke", methods=["GET", "POST"])
@_csrf_checked
def revoke(id: str, token_id: str) -> Response:
    back = tk.redirect_to("mltokens.index", id=id)
    return _revoke(token_id, tk.h.url_for("mltokens.revoke", id=id, token_id=token_id), back)


@bp.route("/ckan-admin/ml-tokens", methods=["GET"])
def admin() -> Response:
    user = tk.request.args.get("user", "").strip()
    try:
        tk.check_access("mltoken_list", _context(), {"all_users": True})
    except tk.NotAuthorized:
        return tk.abort(403, tk._("Need to be system administrator to administer"))
    tokens, _errors = _call("mltoken_list", {"user": user} if user else {"all_users": True})
    return tk.render("mltokens/admin.html", {"tokens": tokens or [], "user": user})


@bp.route("/ckan-admin/ml-tokens/<token_id>/revoke", methods=["GET", "POST"])
@_csrf_checked
def admin_revoke(token_id: str) -> Response:
    back = tk.redirect_to("mltokens.admin", user=tk.request.args.get("user") or None)
    url = tk.h.url_for("mltokens.admin_revoke", token_id=token_id, user=tk.request.args.get("user") or None)
    return _revoke(token_id, url, back)


@bp.route("/ckan-admin/ml-tokens/revoke-all", methods=["GET", "POST"])
@_csrf_checked
def admin_revoke_all() -> Response:
    """Revoke every active token of one user (GET asks for confirmation)."""
    user = (tk.request.values.get("user") or "").strip()
    back = tk.redirect_to("mltokens.admin", user=user or None)
    if not user:
        tk.h.flash_error(tk._("Choose a user first."))
        return back
    if tk.request.method == "GET":
        return tk.render("mltokens/confirm_revoke_all.html", {"user": user})
    revoked, _errors = _call("mltoken_revoke_all", {"user": user, "reason": tk.request.form.get("reason") or None})
    if revoked is not None:
        tk.h.flash_success(
            tk.ungettext("{n} token of {user} revoked.", "{n} tokens of {user} revoked.", len(revoked)).format(
                n=len(revoked), user=user
            )
        )
    return back
