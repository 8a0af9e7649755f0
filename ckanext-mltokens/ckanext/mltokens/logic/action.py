"""The mltoken_* actions, and CKAN's user and organization deletions chained to revoke the owner's tokens.

Every action checks access, validates its input, then asks token_service's
lifecycle, which decides ownership: somebody else's token is "not found".
Token strings are returned once, by create and renew, and never stored.

With `owner_org`, an action is about the tokens of that organization (organizations.py):
the caller acts for it, and reaches its tokens only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import ckan.model as model
import ckan.plugins.toolkit as tk
from ckan.types import Action, ActionResult, Context, DataDict

from token_service.errors import InvalidInput, RolesNotAllowed
from token_service.issuers import ORGANIZATION, USER
from token_service.lifecycle import Actor

from .. import catalogue, compat, csrf, organizations, service
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


def _organization(name_or_id: str) -> model.Group:
    org = organizations.get(name_or_id)
    if org is None:
        raise tk.ObjectNotFound(tk._("Organization not found."))
    return org


def _acting(context: Context, data: DataDict) -> tuple[Actor, model.Group | None]:
    """The caller as actor, acting for the organization `owner_org` names (access was checked), or for themselves."""
    user = service.user_of(context)
    if "owner_org" not in data:
        return service.actor_of(user), None
    org = _organization(data["owner_org"])
    return service.actor_of(user, organizations.owner(org)), org


def _one_owner(data: DataDict, *others: str) -> None:
    """`owner_org` names the owner on its own: with `user` or `all_users` the request is ambiguous."""
    if "owner_org" in data and any(data.get(key) for key in others):
        message = tk._("Give owner_org alone, without {others}.").format(others=" or ".join(others))
        raise service.validation_error({"owner_org": [message]}, InvalidInput.code)


@csrf.required
def mltoken_create(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """Create an ML API token for the calling user, or for an organization the caller administers.

    :param name: a name the user will recognise (unique among the owner's active tokens)
    :param roles: the roles to grant: a list, or names separated by commas or spaces
    :param ttl: lifetime, e.g. ``30d`` or ``12h`` (optional; default from config)
    :param expires: or the expiry, an ISO 8601 date (00:00 UTC) or date-time
    :param rate_limit: optional, the token's own limit in requests per second
    :param daily_quota: optional, the token's own limit in requests per day
    :param kind: ``access_token`` (default) or, where the issuer offers it, ``client_credentials``
    :param owner_org: optional, an organization's name or id: the token is the organization's (it outlives
        its creator's membership), may carry the roles of the organization's own models, and is managed
        by the organization's admins
    :returns: the token's details and, once only, the token string as ``token``
    """
    tk.check_access("mltoken_create", context, data_dict)
    data = _validated(data_dict, schema.mltoken_create(), context)
    ttl, fields = _ttl(data)
    actor, org = _acting(context, data)
    if org is None:
        owner = service.owner_of(service.user_of(context))
        offered = set(service.offered_roles(owner))
    else:
        owner = organizations.owner(org)
        offered = set(organizations.offered_roles(org))
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
            actor,
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
    :param owner_org: or an organization's name or id: its tokens (its admins and sysadmins)
    """
    tk.check_access("mltoken_list", context, data_dict)
    data = _validated(data_dict, schema.mltoken_list(), context)
    _one_owner(data, "user", "all_users")
    actor, org = _acting(context, data)
    if org is not None:
        owner_id, kind = org.id, ORGANIZATION
    else:
        owner_id = None if data["all_users"] else _user(data["user"]).id if "user" in data else actor.id
        kind = USER
    with service.ckan_errors():
        tokens = service.lifecycle().list(actor, owner_id, data["include_inactive"], owner_kind=kind)
    return [t.as_dict() for t in tokens]


@tk.side_effect_free
def mltoken_show(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """One token's details (never the token string).

    :param id: the token id
    :param owner_org: for an organization's token, the organization's name or id
    """
    tk.check_access("mltoken_show", context, data_dict)
    data = _validated(data_dict, schema.mltoken_show(), context)
    actor, _org = _acting(context, data)
    with service.ckan_errors():
        return service.lifecycle().show(data["id"], actor).as_dict()


@csrf.required
def mltoken_renew(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """Give a token a new expiry; the previous token string stops working.

    :param id: the token id
    :param ttl: new lifetime from now (optional; default: the token's current lifetime)
    :param expires: or the new expiry, an ISO 8601 date (00:00 UTC) or date-time
    :param owner_org: for an organization's token, the organization's name or id
    :returns: the token's details and, once only, the new token string as ``token``
    """
    tk.check_access("mltoken_renew", context, data_dict)
    data = _validated(data_dict, schema.mltoken_renew(), context)
    ttl, fields = _ttl(data)
    actor, _org = _acting(context, data)
    with service.ckan_errors(fields):
        issued = service.lifecycle().renew(data["id"], actor, ttl)
    return {**issued.info.as_dict(), "token": issued.secret}


@csrf.required
def mltoken_revoke(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """Revoke a token at once, everywhere.

    :param id: the token id
    :param reason: optional, kept with the revocation
    :param owner_org: for an organization's token, the organization's name or id
    """
    tk.check_access("mltoken_revoke", context, data_dict)
    data = _validated(data_dict, schema.mltoken_revoke(), context)
    actor, _org = _acting(context, data)
    with service.ckan_errors():
        return service.lifecycle().revoke(data["id"], actor, data.get("reason")).as_dict()


@csrf.required
def mltoken_revoke_all(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """Revoke every active token of a user (one's own, or anybody's for a sysadmin) or of an organization.

    :param user: user name or id (optional; default: the caller)
    :param owner_org: or an organization's name or id: its tokens (its admins and sysadmins)
    :param reason: optional, kept with the revocations
    :returns: the revoked tokens
    """
    tk.check_access("mltoken_revoke_all", context, data_dict)
    data = _validated(data_dict, schema.mltoken_revoke_all(), context)
    _one_owner(data, "user")
    actor, org = _acting(context, data)
    if org is not None:
        owner_id, kind = org.id, ORGANIZATION
    else:
        owner_id, kind = (_user(data["user"]).id if "user" in data else actor.id), USER
    with service.ckan_errors():
        revoked = service.lifecycle().revoke_all(owner_id, actor, data.get("reason"), owner_kind=kind)
    return [t.as_dict() for t in revoked]


@tk.side_effect_free
def mltoken_roles_list(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """The roles the caller may put on a token (from the issuer, narrowed by ``role_prefixes``).

    :param owner_org: optional, an organization's name or id: the roles its tokens may carry (those of
        its own models)
    """
    tk.check_access("mltoken_roles_list", context, data_dict)
    data = _validated(data_dict, schema.mltoken_roles_list(), context)
    if "owner_org" in data:
        return organizations.offered_roles(_organization(data["owner_org"]))
    return service.offered_roles(service.owner_of(service.user_of(context)))


@csrf.required
@tk.chained_action
def user_delete(original: Action, context: Context, data_dict: DataDict) -> ActionResult.UserDelete:
    """Revoke all the user's ML API tokens, then delete the user.

    The revocation comes first so that a failure leaves the user in place with an error,
    never a deleted user with working tokens. The organizations' tokens the user made stay:
    they are the organizations'.
    """
    tk.check_access("user_delete", context, data_dict)
    user = _user(_validated(data_dict, schema.user_delete(), context)["id"])
    caller = model.User.get(context.get("user") or "")
    service.lifecycle().revoke_all(user.id, service.deleting_actor(caller, "ckan user_delete"), "user deleted")
    return original(context, data_dict)


@csrf.required
@tk.chained_action
def organization_purge(original: Action, context: Context, data_dict: DataDict) -> None:
    """Purge an organization; an active one is deleted first, which revokes its tokens (plugin.py's
    `IOrganizationController.delete`) under CKAN's own rules for deleting it."""
    tk.check_access("organization_purge", context, data_dict)
    org = organizations.get(_validated(data_dict, schema.organization_delete(), context)["id"])
    if org is not None:  # else CKAN's own action answers (not found, a group), or it was deleted already
        tk.get_action("organization_delete")({"user": context.get("user"), "ignore_auth": True}, {"id": org.id})
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
