"""Web pages: the "ML API tokens" tab of a user's page and of an organization's page, and the sysadmin token page.

A new token string is shown once, on the page a create or renew redirects to (see
`once` for how it waits there, encrypted, and why a repeated submission acts once).
"""

from __future__ import annotations

import csv
import functools
import io
import logging
from collections.abc import Callable
from typing import Any

import ckan.model as model
import ckan.plugins.toolkit as tk
from ckan.types import Context, Response

# CKAN's private helper for the user page's variables; ckanext-activity uses it the same way.
from ckan.views.user import _extra_template_variables
from flask import Blueprint, make_response

from token_service.errors import TokenServiceError

from . import csrf, once, organizations, service
from .leaks import bp as leaks_bp
from .logic.validators import MAX_IDS, mltokens_days, mltokens_user
from .service import CODE

__all__ = ["bp", "org_bp", "leaks_bp"]  # the blueprints CKAN registers (tk.blanket.blueprints)

log = logging.getLogger(__name__)
bp = Blueprint("mltokens", __name__)
org_bp = Blueprint("mltokens_org", __name__)  # its own, so the organization's tab is the one highlighted

SERVICE_DOWN = "The token service could not complete the request; nothing was changed. Please try again later."
ROLES_UNAVAILABLE = (
    "The token service is unavailable, so the roles you could grant cannot be shown. Please try again later."
)


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
    for key, messages in error_dict.items():
        if key == CODE:
            continue
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
    """A page that must not be cached: it may carry a token string or a form nonce."""
    response = make_response(body)
    response.headers["Cache-Control"] = "no-store"
    return response


def _user_page(id: str, **extra: Any) -> Response:
    """The token tab of user `id`, for the user or a sysadmin; a service failure is a flashed message."""
    try:  # before CKAN's own user lookup, which a NUL in the address turns into a 500
        mltokens_user(id)
    except tk.Invalid:
        return tk.abort(404, tk._("User not found"))
    try:
        tk.check_access("mltoken_list", _context(), {"user": id})
    except tk.NotAuthorized:
        return tk.abort(403, tk._("Not authorized to see this page"))
    extra_vars = _extra_template_variables(_context(), {"id": id, "user_obj": tk.current_user})
    tokens, _errors = _call("mltoken_list", {"user": id})
    usage = _usage_by_token({"user": id}) if tokens else {}
    roles, roles_problem = _roles() if extra_vars["is_myself"] else ([], None)
    extra_vars.update(
        tokens=tokens or [], usage=usage, roles=roles, roles_problem=roles_problem, data={}, errors={}, created=None
    )
    extra_vars.update(extra)
    return _no_store(tk.render("mltokens/user_tokens.html", extra_vars))


def _roles() -> tuple[list[dict[str, Any]], str | None]:
    """The roles the caller may grant, or none and why: the token service is down (generic; the
    details are logged) or the caller has no usable account at the issuer (its message says so)."""
    try:
        return tk.get_action("mltoken_roles_list")(_context(), {}), None
    except tk.NotAuthorized as exc:
        return [], str(exc) or tk._("Not authorized.")
    except TokenServiceError:
        log.exception("mltoken_roles_list failed")
        return [], tk._(ROLES_UNAVAILABLE)


def _usage_by_token(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The last 30 days' use of the tokens `data` names (mltoken_usage), by token id; {} when unavailable."""
    try:
        found = tk.get_action("mltoken_usage")(_context(), {**data, "days": 30})
    except TokenServiceError:
        log.exception("usage of %s could not be read", data)
        return {}
    return {u["id"]: u for u in found}


def _own_page_or_403(id: str) -> None:
    user = tk.current_user
    if not user.is_authenticated or id not in (user.id, user.name):
        tk.abort(403, tk._("You can only manage your own ML API tokens here."))


def _expiry(form: Any) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The expiry fields of a form as action parameters (a preset lifetime or a date), or an error.

    A date typed while the list shows a lifetime is refused rather than ignored.
    """
    expiry, date = form.get("expiry", ""), form.get("expires_on", "").strip()
    if expiry == "date":
        return {"expires": date}, {}
    if date:
        return {}, {"expires": [tk._('Choose "on the date:" to use the date, or clear the date to use the lifetime.')]}
    return ({"ttl": expiry} if expiry else {}), {}


def _show_result(index: str, id: str, nonce: str) -> Response:
    """Redirect to the token page (endpoint `index`), which shows the result waiting for this form (once)."""
    response = tk.redirect_to(index, id=id)
    response.status_code = 303
    response.set_cookie(
        once.COOKIE,
        nonce,
        max_age=once.RESULT_TTL,
        path=tk.h.url_for(index, id=id),
        httponly=True,
        samesite="Strict",
        secure=tk.request.is_secure,
    )
    return response


def _submit_once(
    index: str, id: str, scope: str, action: str, data: dict[str, Any]
) -> tuple[Response | None, dict[str, Any]]:
    """Run a create/renew for the form's nonce at most once: (redirect to the result on the token page
    `index`, {}) or (None, errors).

    A repeated submission (double click, reloaded POST) leads to the first one's result;
    if that was shown already, to a message naming the token instead of a second token.
    """
    nonce = tk.request.form.get(once.FIELD)
    if not once.valid(nonce):
        tk.h.flash_error(tk._("This form has expired; please fill it in again."))
        return None, {}
    user_id = tk.current_user.id
    earlier = once.claim(user_id, nonce, scope)
    if earlier is None:
        result, errors = _call(action, data)
        if not result:
            once.release(user_id, nonce, scope)
            return None, errors or {}
        once.finish(user_id, nonce, scope, {**result, "action": action})
        return _show_result(index, id, nonce), {}
    if earlier.get("pending") or once.waiting(user_id, nonce):
        return _show_result(index, id, nonce), {}
    tk.h.flash_notice(
        tk._(
            'This form was sent already, for the token "{name}"; its new token string was shown then and is not '
            "shown again. If you did not copy it, renew that token to get a new one."
        ).format(name=earlier["name"])
    )
    return tk.redirect_to(index, id=id), {}


def _with_result(index: str, id: str, page: Callable[..., Response], **extra: Any) -> Response:
    """The token page `page(**extra)`; after a create or renew (the result cookie), with its new token string."""
    nonce = tk.request.cookies.get(once.COOKIE)
    if not nonce or not tk.current_user.is_authenticated:
        return page(**extra)
    created = once.take(tk.current_user.id, nonce) if once.valid(nonce) else None
    if created is None:
        tk.h.flash_notice(tk._("A new token string is shown only once, and it was shown already."))
    response = page(created=created, **extra)
    response.delete_cookie(
        once.COOKIE, path=tk.h.url_for(index, id=id), httponly=True, samesite="Strict", secure=tk.request.is_secure
    )
    return response


def _create_data(form: Any) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The create form's fields as mltoken_create's parameters, or the expiry fields' error."""
    expiry, errors = _expiry(form)
    data = {"name": form.get("name", ""), "roles": form.getlist("roles"), **expiry}
    data.update({key: form[key] for key in ("rate_limit", "daily_quota", "kind") if form.get(key)})
    return data, errors


@bp.route("/ml-tokens")
def mine() -> Response:
    """The caller's own token tab: a stable address for documentation and `ckan.auth.route_after_login`."""
    if not tk.current_user.is_authenticated:
        return tk.redirect_to("user.login", next=tk.h.url_for("mltokens.mine"))
    return tk.redirect_to("mltokens.index", id=tk.current_user.name)


@bp.route("/user/<id>/ml-tokens", methods=["GET"])
def index(id: str) -> Response:
    """The token tab; after a create or renew, with its new token string (shown once).

    `?roles=` (repeated) preselects those of the offered roles on the create form: the dataset
    page's "Create a token for this model" links here so.
    """
    preselected = {"roles": tk.request.args.getlist("roles")}
    return _with_result("mltokens.index", id, functools.partial(_user_page, id), data=preselected)


@bp.route("/user/<id>/ml-tokens", methods=["POST"])
@_csrf_checked
def create(id: str) -> Response:
    _own_page_or_403(id)
    form = tk.request.form
    data, errors = _create_data(form)
    if not errors:
        shown, errors = _submit_once("mltokens.index", id, "create", "mltoken_create", data)
        if shown:
            return shown
    else:
        _flash_errors(errors)
    return _user_page(id, data={**form.to_dict(), "roles": data["roles"]}, errors=errors)


@bp.route("/user/<id>/ml-tokens/<token_id>/renew", methods=["GET", "POST"])
@_csrf_checked
def renew(id: str, token_id: str) -> Response:
    _own_page_or_403(id)
    return _reissue("renew", "mltokens", id, token_id, {})


@bp.route("/user/<id>/ml-tokens/<token_id>/rotate", methods=["GET", "POST"])
@_csrf_checked
def rotate(id: str, token_id: str) -> Response:
    _own_page_or_403(id)
    return _reissue("rotate", "mltokens", id, token_id, {})


def _reissue(verb: str, blueprint: str, id: str, token_id: str, scope: dict[str, str]) -> Response:
    """Renew or rotate (`verb`) a token of the token page `blueprint`.index for `id`: GET asks for
    confirmation (a dialog with JavaScript, a page without); POST acts once, and the token page
    shows the new token string once.

    `scope` names the organization whose token it must be (`owner_org`), on an organization's page.
    """
    back = tk.redirect_to(blueprint + ".index", id=id)
    if tk.request.method == "GET":
        token, _errors = _call("mltoken_show", {"id": token_id, **scope})
        if not token:
            return back
        urls = {
            "action": tk.h.url_for(f"{blueprint}.{verb}", id=id, token_id=token_id),
            "cancel": tk.h.url_for(blueprint + ".index", id=id),
        }
        return _no_store(tk.render(f"mltokens/confirm_{verb}.html", {"token": token, **urls}))
    data = {"id": token_id, **scope}
    shown, _errors = _submit_once(blueprint + ".index", id, f"{verb}:{token_id}", "mltoken_" + verb, data)
    return shown or back


def _revoke(token_id: str, page: str, back: Response, cancel: str, scope: dict[str, str] | None = None) -> Response:
    """GET asks for confirmation (a dialog with JavaScript, this page without); POST revokes.

    `scope` names the organization whose token it must be (`owner_org`), on an organization's page.
    """
    scope = scope or {}
    if tk.request.method == "GET":
        token, _errors = _call("mltoken_show", {"id": token_id, **scope})
        if not token:
            return back
        return tk.render("mltokens/confirm_revoke.html", {"token": token, "action": page, "cancel": cancel})
    reason = tk.request.form.get("reason") or None
    revoked, _errors = _call("mltoken_revoke", {"id": token_id, "reason": reason, **scope})
    if revoked:
        tk.h.flash_success(tk._('Token "{name}" revoked.').format(name=revoked["name"]))
    return back


@bp.route("/user/<id>/ml-tokens/<token_id>/revoke", methods=["GET", "POST"])
@_csrf_checked
def revoke(id: str, token_id: str) -> Response:
    back = tk.redirect_to("mltokens.index", id=id)
    page = tk.h.url_for("mltokens.revoke", id=id, token_id=token_id)
    return _revoke(token_id, page, back, tk.h.url_for("mltokens.index", id=id))


@bp.route("/user/<id>/ml-tokens/<token_id>/notices", methods=["POST"])
@_csrf_checked
def notices(id: str, token_id: str) -> Response:
    """Turn a token's expiry e-mails on or off (the token table's form)."""
    _own_page_or_403(id)
    wanted = tk.request.form.get("expiry_notices")
    if wanted not in ("on", "off"):
        return tk.abort(400, tk._("Choose on or off."))
    token, _errors = _call("mltoken_patch", {"id": token_id, "expiry_notices": wanted == "on"})
    if token:
        message = (
            tk._('You will be e-mailed before the token "{name}" expires.')
            if token["expiry_notices"]
            else tk._('No more e-mails before the token "{name}" expires.')
        )
        tk.h.flash_success(message.format(name=token["name"]))
    return tk.redirect_to("mltokens.index", id=id)


def _named_user(name_or_id: str) -> model.User | None:
    """The CKAN user a sysadmin's filter names, or None (flashed) when there is none."""
    try:  # a NUL or an over-long string would reach PostgreSQL through CKAN's lookup
        user = model.User.get(mltokens_user(name_or_id)) if name_or_id else None
    except tk.Invalid:
        user = None
    if name_or_id and user is None:
        tk.h.flash_error(tk._("User not found."))
    return user


def _sysadmin_only() -> Response | None:
    """A 403 page for anybody but a sysadmin (the administration pages), else None."""
    try:
        tk.check_access("mltoken_list", _context(), {"all_users": True})
    except tk.NotAuthorized:
        return tk.abort(403, tk._("Need to be system administrator to administer"))
    return None


@bp.route("/ckan-admin/ml-tokens", methods=["GET"])
def admin() -> Response:
    query = tk.request.args.get("user", "").strip()
    if refused := _sysadmin_only():
        return refused
    user = _named_user(query)
    tokens, _errors = (
        _call("mltoken_list", {"user": user.id})
        if user
        else ((None, None) if query else _call("mltoken_list", {"all_users": True}))
    )
    unused, _errors = (None, None) if query else _call("mltoken_list", {"all_users": True, "unused": True})
    return tk.render(
        "mltokens/admin.html",
        {
            "tokens": tokens or [],
            "query": query,
            "user": user,
            "unused": unused or [],
            "unused_days": int(service.unused_after().total_seconds() // 86400),
        },
    )


@bp.route("/ckan-admin/ml-tokens/<token_id>/revoke", methods=["GET", "POST"])
@_csrf_checked
def admin_revoke(token_id: str) -> Response:
    if refused := _sysadmin_only():
        return refused
    user = tk.request.args.get("user") or None
    back = tk.redirect_to("mltokens.admin", user=user)
    page = tk.h.url_for("mltokens.admin_revoke", token_id=token_id, user=user)
    return _revoke(token_id, page, back, tk.h.url_for("mltokens.admin", user=user))


@bp.route("/ckan-admin/ml-tokens/revoke-all", methods=["GET", "POST"])
@_csrf_checked
def admin_revoke_all() -> Response:
    """Revoke every active token of one user (GET asks for confirmation)."""
    if refused := _sysadmin_only():  # before the user is looked up: the page names them
        return refused
    query = (tk.request.values.get("user") or "").strip()
    back = tk.redirect_to("mltokens.admin", user=query or None)
    if not query:
        tk.h.flash_error(tk._("Choose a user first."))
        return back
    user = _named_user(query)
    if user is None:
        return back
    if tk.request.method == "GET":
        return tk.render("mltokens/confirm_revoke_all.html", {"user": user})
    revoked, _errors = _call("mltoken_revoke_all", {"user": user.id, "reason": tk.request.form.get("reason") or None})
    if revoked is not None:
        tk.h.flash_success(
            tk.ungettext("{n} token of {user} revoked.", "{n} tokens of {user} revoked.", len(revoked)).format(
                n=len(revoked), user=user.name
            )
        )
    return tk.redirect_to("mltokens.admin", user=user.name)


# An organization's tokens (organizations.py): its admins manage them on the organization's page.


def _organization_or_abort(id: str) -> model.Group:
    """The organization of the page, if the caller may manage its tokens; else 404 or 403."""
    org = organizations.get(id)
    if org is None:
        return tk.abort(404, tk._("Organization not found"))
    try:
        tk.check_access("mltoken_list", _context(), {"owner_org": org.id})
    except tk.NotAuthorized:
        return tk.abort(403, tk._("Not authorized to see this page"))
    return org


def _organization_page(org: Any, **extra: Any) -> Response:
    """The token tab of an organization; a service failure is a flashed message.

    The organization is shown without its dataset count or members (no search index needed).
    """
    shown = {"id": org.id, "include_datasets": False, "include_dataset_count": False, "include_users": False}
    group_dict = tk.get_action("organization_show")(_context(), shown)
    tokens, _errors = _call("mltoken_list", {"owner_org": org.id})
    roles, _errors = _call("mltoken_roles_list", {"owner_org": org.id})
    extra_vars = {
        "group_dict": group_dict,
        "group_type": group_dict["type"],
        "tokens": tokens or [],
        "roles": roles or [],
        "data": {},
        "errors": {},
        "created": None,
        **extra,
    }
    return _no_store(tk.render("mltokens/organization_tokens.html", extra_vars))


@org_bp.route("/organization/ml-tokens/<id>", methods=["GET"], endpoint="index")
def organization_index(id: str) -> Response:
    """The organization's token tab; after a create or renew, with its new token string (shown once).

    `?roles=` (repeated) preselects those of the offered roles, as on a user's page.
    """
    org = _organization_or_abort(id)
    preselected = {"roles": tk.request.args.getlist("roles")}
    return _with_result("mltokens_org.index", id, functools.partial(_organization_page, org), data=preselected)


@org_bp.route("/organization/ml-tokens/<id>", methods=["POST"], endpoint="create")
@_csrf_checked
def organization_create(id: str) -> Response:
    org = _organization_or_abort(id)
    form = tk.request.form
    data, errors = _create_data(form)
    if not errors:
        data["owner_org"] = org.id
        shown, errors = _submit_once("mltokens_org.index", id, "create:" + org.id, "mltoken_create", data)
        if shown:
            return shown
    else:
        _flash_errors(errors)
    return _organization_page(org, data={**form.to_dict(), "roles": data["roles"]}, errors=errors)


@org_bp.route("/organization/ml-tokens/<id>/<token_id>/renew", methods=["GET", "POST"], endpoint="renew")
@_csrf_checked
def organization_renew(id: str, token_id: str) -> Response:
    org = _organization_or_abort(id)
    return _reissue("renew", "mltokens_org", id, token_id, {"owner_org": org.id})


@org_bp.route("/organization/ml-tokens/<id>/<token_id>/rotate", methods=["GET", "POST"], endpoint="rotate")
@_csrf_checked
def organization_rotate(id: str, token_id: str) -> Response:
    org = _organization_or_abort(id)
    return _reissue("rotate", "mltokens_org", id, token_id, {"owner_org": org.id})


@org_bp.route("/organization/ml-tokens/<id>/<token_id>/revoke", methods=["GET", "POST"], endpoint="revoke")
@_csrf_checked
def organization_revoke(id: str, token_id: str) -> Response:
    org = _organization_or_abort(id)
    back = tk.redirect_to("mltokens_org.index", id=id)
    page = tk.h.url_for("mltokens_org.revoke", id=id, token_id=token_id)
    return _revoke(token_id, page, back, tk.h.url_for("mltokens_org.index", id=id), {"owner_org": org.id})


@bp.route("/ckan-admin/ml-tokens/revoke-unused", methods=["POST"])
@_csrf_checked
def admin_revoke_unused() -> Response:
    """Revoke the chosen unused tokens: the first POST shows what will be revoked, the confirmed one revokes."""
    if refused := _sysadmin_only():
        return refused
    form = tk.request.form
    chosen = list(dict.fromkeys(form.getlist("token")))
    if not chosen or len(chosen) > MAX_IDS:
        tk.h.flash_error(tk._("Choose between 1 and {n} tokens.").format(n=MAX_IDS))
        return tk.redirect_to("mltokens.admin")
    if form.get("confirmed") != "yes":
        unused, _errors = _call("mltoken_list", {"all_users": True, "unused": True})
        tokens = [t for t in unused or [] if t["id"] in chosen]
        if not tokens:
            tk.h.flash_error(tk._("None of the chosen tokens is still unused and active."))
            return tk.redirect_to("mltokens.admin")
        return tk.render("mltokens/confirm_revoke_unused.html", {"tokens": tokens})
    done, _errors = _call(
        "mltoken_revoke_all", {"all_users": True, "ids": chosen, "reason": form.get("reason") or "unused"}
    )
    if done is not None:  # all of them in one transaction, or none (the failure flashed)
        tk.h.flash_success(tk.ungettext("{n} token revoked.", "{n} tokens revoked.", len(done)).format(n=len(done)))
    return tk.redirect_to("mltokens.admin")


def csv_cell(value: Any) -> str:
    """A cell a spreadsheet shows as text: one starting with =, +, -, @ (or tab, CR) gets a leading apostrophe
    (OWASP's advice against CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@bp.route("/ckan-admin/ml-tokens/usage.csv", methods=["GET"])
def admin_usage_csv() -> Response:
    """Every token's requests per day with use (days without use left out), over `days` (default 30)."""
    try:
        tk.check_access("mltoken_usage", _context(), {"all_users": True})
    except tk.NotAuthorized:
        return tk.abort(403, tk._("Need to be system administrator to administer"))
    try:
        days = mltokens_days(tk.request.args.get("days", "30"))
        usage = tk.get_action("mltoken_usage")(_context(), {"all_users": True, "days": days})
    except (tk.Invalid, tk.ValidationError):
        return tk.abort(400, tk._("Give the period as a whole number of days, at most the days usage is kept."))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["date", "token_id", "token_name", "owner_name", "status", "requests"])
    for token in usage:
        for day in token["daily"]:
            if day["count"]:
                row = [day["date"], token["id"], token["name"], token["owner_name"], token["status"], day["count"]]
                writer.writerow([csv_cell(cell) for cell in row])
    response = make_response(out.getvalue())
    response.headers["Content-Type"] = "text/csv; charset=utf-8"
    response.headers["Content-Disposition"] = f'attachment; filename="ml-token-usage-{days}d.csv"'
    response.headers["Cache-Control"] = "no-store"
    return response
