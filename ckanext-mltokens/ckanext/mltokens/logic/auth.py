"""Who may call the mltoken_* actions.

Anonymous callers are turned away by CKAN itself (none of these allows anonymous
access). Whether a token belongs to the caller is decided by token_service, which
answers "not found" for somebody else's token, so show/renew/revoke only need a
logged-in user here.

With `owner_org` (an organization's tokens), the caller must be allowed to manage the
organization as CKAN decides it for `organization_update`: its admins, and sysadmins
(whom CKAN lets through every check not marked `auth_sysadmins_check`); editors and
members may not.
"""

from __future__ import annotations

import functools
from typing import Any

import ckan.authz as authz
import ckan.model as model
import ckan.plugins.toolkit as tk
from ckan.types import AuthResult, Context, DataDict

from .. import organizations
from .validators import mltokens_boolean, mltokens_user


def _active_user(context: Context) -> AuthResult:
    user = context.get("auth_user_obj")
    if not isinstance(user, model.User) or user.state != model.State.ACTIVE:
        return {"success": False, "msg": tk._("Only active users may create or renew ML API tokens.")}
    return {"success": True}


def _self_or_sysadmin(context: Context, name_or_id: Any) -> AuthResult:
    """The caller's own tokens; sysadmins never get here (CKAN lets them through).

    Auth runs before the schema, on the raw input: a malformed user reference cannot
    name the caller, so it is refused here without being looked up.
    """
    user = context.get("auth_user_obj")
    if not isinstance(user, model.User):
        return {"success": False}
    try:
        other = model.User.get(mltokens_user(name_or_id)) if name_or_id else user
    except tk.Invalid:
        other = None
    if other is None or other.id != user.id:
        return {"success": False, "msg": tk._("Only a sysadmin may manage another user's ML API tokens.")}
    return {"success": True}


def _organization_admin(context: Context, data_dict: DataDict) -> AuthResult:
    """The caller may manage the organization `owner_org` names (which must exist, and be one).

    A sysadmin always may (also where `auth_sysadmins_check` brings them here): the action
    then answers a malformed or unknown `owner_org` with its validation error or "not found".
    """
    if authz.is_sysadmin(context.get("user")):
        return {"success": True}
    org = organizations.get(data_dict.get("owner_org"))
    if org is None or not organizations.may_manage(context.get("user") or "", org):
        return {"success": False, "msg": tk._("Only an admin of the organization may manage its ML API tokens.")}
    return {"success": True}


def _for_organization(check: Any) -> Any:
    """An auth function that, when `owner_org` is given, asks `_organization_admin` first."""

    @functools.wraps(check)
    def auth(context: Context, data_dict: DataDict) -> AuthResult:
        if "owner_org" in data_dict:
            found = _organization_admin(context, data_dict)
            if not found["success"]:
                return found
        return check(context, data_dict)

    return auth


def _asks_for_all(value: Any) -> bool:
    """Whether `all_users` asks for everybody's tokens; anything but a clear "no" counts as asking."""
    if value is None or value == "":
        return False
    try:
        return mltokens_boolean(value)
    except tk.Invalid:
        return True


@tk.auth_sysadmins_check
@_for_organization
def mltoken_create(context: Context, data_dict: DataDict) -> AuthResult:
    return _active_user(context)


@tk.auth_sysadmins_check
@_for_organization
def mltoken_renew(context: Context, data_dict: DataDict) -> AuthResult:
    return _active_user(context)


@tk.auth_sysadmins_check
@_for_organization
def mltoken_rotate(context: Context, data_dict: DataDict) -> AuthResult:
    return _active_user(context)


def _whose(context: Context, data_dict: DataDict, everybody: str) -> AuthResult:
    """An organization's tokens for its admins; every user's (`all_users`) for sysadmins only (CKAN
    lets them past every auth function); a user's own, or anybody's for a sysadmin."""
    if "owner_org" in data_dict:  # `user` / `all_users` beside it are refused by the action
        return _organization_admin(context, data_dict)
    if _asks_for_all(data_dict.get("all_users")):
        return {"success": False, "msg": everybody}
    return _self_or_sysadmin(context, data_dict.get("user"))


def mltoken_list(context: Context, data_dict: DataDict) -> AuthResult:
    return _whose(context, data_dict, tk._("Only a sysadmin may list every user's ML API tokens."))


def mltoken_revoke_all(context: Context, data_dict: DataDict) -> AuthResult:
    return _whose(context, data_dict, tk._("Only a sysadmin may revoke tokens of every user."))


@_for_organization
def mltoken_show(context: Context, data_dict: DataDict) -> AuthResult:
    return {"success": True}


@_for_organization
def mltoken_revoke(context: Context, data_dict: DataDict) -> AuthResult:
    return {"success": True}


@_for_organization
def mltoken_roles_list(context: Context, data_dict: DataDict) -> AuthResult:
    return {"success": True}


@_for_organization
def mltoken_patch(context: Context, data_dict: DataDict) -> AuthResult:
    return {"success": True}


def mltoken_usage(context: Context, data_dict: DataDict) -> AuthResult:
    """As mltoken_list (token_service answers "not found" for somebody else's token id)."""
    return mltoken_list(context, data_dict)
