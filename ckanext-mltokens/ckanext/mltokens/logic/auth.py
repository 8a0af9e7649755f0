"""Who may call the mltoken_* actions.

Anonymous callers are turned away by CKAN itself (none of these allows anonymous
access). Whether a token belongs to the caller is decided by token_service, which
answers "not found" for somebody else's token, so show/renew/revoke only need a
logged-in user here.
"""

from __future__ import annotations

from typing import Any

import ckan.model as model
import ckan.plugins.toolkit as tk
from ckan.types import AuthResult, Context, DataDict

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


def _asks_for_all(value: Any) -> bool:
    """Whether `all_users` asks for everybody's tokens; anything but a clear "no" counts as asking."""
    if value is None or value == "":
        return False
    try:
        return mltokens_boolean(value)
    except tk.Invalid:
        return True


@tk.auth_sysadmins_check
def mltoken_create(context: Context, data_dict: DataDict) -> AuthResult:
    return _active_user(context)


@tk.auth_sysadmins_check
def mltoken_renew(context: Context, data_dict: DataDict) -> AuthResult:
    return _active_user(context)


def mltoken_list(context: Context, data_dict: DataDict) -> AuthResult:
    if _asks_for_all(data_dict.get("all_users")):
        return {"success": False, "msg": tk._("Only a sysadmin may list every user's ML API tokens.")}
    return _self_or_sysadmin(context, data_dict.get("user"))


def mltoken_revoke_all(context: Context, data_dict: DataDict) -> AuthResult:
    return _self_or_sysadmin(context, data_dict.get("user"))


def mltoken_show(context: Context, data_dict: DataDict) -> AuthResult:
    return {"success": True}


def mltoken_revoke(context: Context, data_dict: DataDict) -> AuthResult:
    return {"success": True}


def mltoken_roles_list(context: Context, data_dict: DataDict) -> AuthResult:
    return {"success": True}


def mltoken_patch(context: Context, data_dict: DataDict) -> AuthResult:
    return {"success": True}


def mltoken_usage(context: Context, data_dict: DataDict) -> AuthResult:
    """As mltoken_list (token_service answers "not found" for somebody else's token id)."""
    return mltoken_list(context, data_dict)
