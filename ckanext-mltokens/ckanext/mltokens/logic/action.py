"""The mltoken_* actions, and `user_delete` chained to revoke the user's tokens.

Every action checks access, validates its input, then asks token_service's
lifecycle, which decides ownership: somebody else's token is "not found".
Token strings are returned once, by create and renew, and never stored.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import ckan.model as model
import ckan.plugins.toolkit as tk
from ckan.types import Action, ActionResult, Context, DataDict

from token_service.errors import InvalidInput, RolesNotAllowed
from token_service.lifecycle import Actor

from .. import catalogue, compat, csrf, service
from . import schema


def _validated(data_dict: DataDict, schema_: dict[str, Any], context: Context) -> DataDict:
    data, errors = compat.navl_validate(data_dict, schema_, context)
    if errors:
        raise service.validation_error(errors, InvalidInput.code)
    return data


def _ttl(data: DataDict) -> tuple[timedelta | None, dict[str, str]]:
    """The lifetime asked for, as `ttl` or as an `expires` moment (not both)."""
    if "ttl" in data and "expires" in data:
        raise service.validation_error({"expires": [tk._("Give either ttl or expires, not both.")]}, InvalidInput.code)
    if "expires" in data:
        now = datetime.now(UTC).replace(microsecond=0)
        return data["expires"] - now, {"ttl": "expires"}
    return data.get("ttl"), {}


def _user(name_or_id: str) -> model.User:
    user = model.User.get(name_or_id)
    if user is None:
        raise tk.ObjectNotFound(tk._("User not found."))
    return user


@csrf.required
def mltoken_create(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """Create an ML API token for the calling user.

    :param name: a name the user will recognise (unique among their active tokens)
    :param roles: the roles to grant: a list, or names separated by commas or spaces
    :param ttl: lifetime, e.g. ``30d`` or ``12h`` (optional; default from config)
    :param expires: or the expiry, an ISO 8601 date (00:00 UTC) or date-time
    :param rate_limit: optional, the token's own limit in requests per second
    :param daily_quota: optional, the token's own limit in requests per day
    :param kind: ``access_token`` (default) or, where the issuer offers it, ``client_credentials``
    :returns: the token's details and, once only, the token string as ``token``
    """
    tk.check_access("mltoken_create", context, data_dict)
    data = _validated(data_dict, schema.mltoken_create(), context)
    user = service.user_of(context)
    ttl, fields = _ttl(data)
    owner = service.owner_of(user)
    offered = set(service.offered_roles(owner))
    refused = sorted({r for r in data["roles"] if r not in offered})
    if refused:
        message = tk._("You may not grant: {roles}.").format(roles=", ".join(refused))
        raise service.validation_error({"roles": [message]}, RolesNotAllowed.code)
    with service.ckan_errors(fields):
        issued = service.lifecycle().create(
            owner,
            data["name"],
            data["roles"],
            ttl,
            service.actor_of(user),
            kind=data.get("kind", "access_token"),
            rate_limit=data.get("rate_limit"),
            daily_quota=data.get("daily_quota"),
        )
    return {**issued.info.as_dict(), "token": issued.secret}


@tk.side_effect_free
def mltoken_list(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """List ML API tokens: the caller's own; a sysadmin may name any ``user`` or ask for ``all_users``.

    :param user: user name or id (optional; default: the caller)
    :param all_users: sysadmins only, every user's tokens (default False)
    :param include_inactive: include revoked and expired tokens (default True)
    :param unused: only active tokens neither used nor created within ``ckanext.mltokens.unused_after``,
        longest unused first (default False)
    """
    tk.check_access("mltoken_list", context, data_dict)
    data = _validated(data_dict, schema.mltoken_list(), context)
    caller = service.user_of(context)
    owner_id = None if data["all_users"] else _user(data["user"]).id if "user" in data else caller.id
    idle = service.unused_after() if data["unused"] else None
    with service.ckan_errors():
        tokens = service.lifecycle().list(service.actor_of(caller), owner_id, data["include_inactive"], idle)
    return [t.as_dict() for t in tokens]


@tk.side_effect_free
def mltoken_show(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """One token's details (never the token string).

    :param id: the token id
    """
    tk.check_access("mltoken_show", context, data_dict)
    data = _validated(data_dict, schema.mltoken_show(), context)
    with service.ckan_errors():
        return service.lifecycle().show(data["id"], service.actor_of(service.user_of(context))).as_dict()


@csrf.required
def mltoken_renew(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """Give a token a new expiry; the previous token string stops working.

    :param id: the token id
    :param ttl: new lifetime from now (optional; default: the token's current lifetime)
    :param expires: or the new expiry, an ISO 8601 date (00:00 UTC) or date-time
    :returns: the token's details and, once only, the new token string as ``token``
    """
    tk.check_access("mltoken_renew", context, data_dict)
    data = _validated(data_dict, schema.mltoken_renew(), context)
    ttl, fields = _ttl(data)
    with service.ckan_errors(fields):
        issued = service.lifecycle().renew(data["id"], service.actor_of(service.user_of(context)), ttl)
    return {**issued.info.as_dict(), "token": issued.secret}


@csrf.required
def mltoken_revoke(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """Revoke a token at once, everywhere.

    :param id: the token id
    :param reason: optional, kept with the revocation
    """
    tk.check_access("mltoken_revoke", context, data_dict)
    data = _validated(data_dict, schema.mltoken_revoke(), context)
    actor = service.actor_of(service.user_of(context))
    with service.ckan_errors():
        return service.lifecycle().revoke(data["id"], actor, data.get("reason")).as_dict()


@csrf.required
def mltoken_revoke_all(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """Revoke every active token of a user: one's own, or anybody's for a sysadmin.

    :param user: user name or id (optional; default: the caller)
    :param reason: optional, kept with the revocations
    :returns: the revoked tokens
    """
    tk.check_access("mltoken_revoke_all", context, data_dict)
    data = _validated(data_dict, schema.mltoken_revoke_all(), context)
    caller = service.user_of(context)
    owner = _user(data["user"]) if "user" in data else caller
    with service.ckan_errors():
        revoked = service.lifecycle().revoke_all(owner.id, service.actor_of(caller), data.get("reason"))
    return [t.as_dict() for t in revoked]


@csrf.required
def mltoken_patch(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """Change a token's settings: for now, whether its owner is e-mailed before it expires.

    :param id: the token id
    :param expiry_notices: true or false (``ckan mltokens notify`` sends the warnings)
    :returns: the token's details
    """
    tk.check_access("mltoken_patch", context, data_dict)
    data = _validated(data_dict, schema.mltoken_patch(), context)
    actor = service.actor_of(service.user_of(context))
    with service.ckan_errors():
        return service.lifecycle().set_expiry_notices(data["id"], actor, data["expiry_notices"]).as_dict()


@tk.side_effect_free
def mltoken_usage(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """Requests per UTC day of one token, or of a user's tokens, over the last ``days`` days.

    :param id: one token's id (optional; not with ``user`` or ``all_users``)
    :param user: user name or id (optional; default: the caller; another user's for sysadmins)
    :param all_users: sysadmins only, every user's tokens (default False)
    :param days: the period, today included (default 30; at most ``usage_retention``)
    :returns: per token: id, name, owner, status, last_used_at, use_count (all time), today,
        and ``daily``, a list of {date, count} from the oldest day to today
    """
    tk.check_access("mltoken_usage", context, data_dict)
    data = _validated(data_dict, schema.mltoken_usage(), context)
    if "id" in data and ("user" in data or data["all_users"]):
        raise service.validation_error({"id": [tk._("Give either id or user, not both.")]}, InvalidInput.code)
    caller = service.user_of(context)
    owner_id = None if data["all_users"] else _user(data["user"]).id if "user" in data else caller.id
    with service.ckan_errors():
        usage = service.lifecycle().usage(
            service.actor_of(caller), token_id=data.get("id"), owner_id=owner_id, days=data["days"]
        )
    return [u.as_dict() for u in usage]


@tk.side_effect_free
def mltoken_roles_list(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """The roles the caller may put on a token (from the issuer, narrowed by ``role_prefixes``)."""
    tk.check_access("mltoken_roles_list", context, data_dict)
    return service.offered_roles(service.owner_of(service.user_of(context)))


@csrf.required
@tk.chained_action
def user_delete(original: Action, context: Context, data_dict: DataDict) -> ActionResult.UserDelete:
    """Revoke all the user's ML API tokens, then delete the user.

    CKAN has authorised the deletion, so the revocation runs with an operator's
    rights, in the caller's name. It comes first so that a failure leaves the user
    in place with an error, never a deleted user with working tokens.
    """
    tk.check_access("user_delete", context, data_dict)
    user = _user(_validated(data_dict, schema.user_delete(), context)["id"])
    caller = model.User.get(context.get("user") or "")
    actor = (
        Actor(caller.id, caller.name, is_admin=True, source="ckan user_delete")
        if caller
        else Actor.operator("ckan user_delete")
    )
    service.lifecycle().revoke_all(user.id, actor, "user deleted")
    return original(context, data_dict)


def _model_fields_checked(data_dict: DataDict) -> None:
    """A dataset's model fields (catalogue.py) are valid or absent; else a validation error, nothing saved."""
    if found := catalogue.errors(data_dict):
        raise tk.ValidationError(found)


@tk.chained_action
def package_create(original: Action, context: Context, data_dict: DataDict) -> ActionResult.PackageCreate:
    """CKAN's package_create, refusing invalid `model_id` / `model_operations` fields first."""
    _model_fields_checked(data_dict)
    return original(context, data_dict)


@tk.chained_action
def package_update(original: Action, context: Context, data_dict: DataDict) -> ActionResult.PackageUpdate:
    """CKAN's package_update (and so package_patch), refusing invalid model fields first."""
    _model_fields_checked(data_dict)
    return original(context, data_dict)
