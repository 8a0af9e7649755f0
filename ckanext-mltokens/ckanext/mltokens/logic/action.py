"""The mltoken_* actions, and CKAN's user and organization deletions chained to revoke the owner's tokens.

Every action checks access, validates its input, then asks token_service's
lifecycle, which decides ownership: somebody else's token is "not found".
Token strings are returned once, by create and renew, and never stored.

With `owner_org`, an action is about the tokens of that organization (organizations.py):
the caller acts for it, and reaches its tokens only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import ckan.model as model
import ckan.plugins.toolkit as tk
from ckan.types import Action, ActionResult, Context, DataDict

from token_service.errors import InvalidInput, RolesNotAllowed, TokenServiceError
from token_service.issuers import ORGANIZATION, USER
from token_service.lifecycle import Actor

from .. import access, catalogue, compat, csrf, organizations, service
from . import schema

log = logging.getLogger(__name__)


def _validated(data_dict: DataDict, schema_: dict[str, Any], context: Context) -> DataDict:
    data, errors = compat.navl_validate(data_dict, schema_, context)
    if errors:
        raise service.validation_error(errors, InvalidInput.code)
    return data


def _ttl(data: DataDict) -> tuple[timedelta | datetime | None, dict[str, str]]:
    """The lifetime asked for, as `ttl` or as an `expires` moment (not both); the token service measures
    a moment against the token's own issue time."""
    if "ttl" in data and "expires" in data:
        raise service.validation_error({"expires": [tk._("Give either ttl or expires, not both.")]}, InvalidInput.code)
    if "expires" in data:
        return data["expires"], {"ttl": "expires"}
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


def _listed_owner(data: DataDict, actor: Actor, org: model.Group | None) -> tuple[str | None, str]:
    """Whose tokens a list asks for, and their kind: the organization's, a named user's, every
    user's (None), or the caller's own."""
    if org is not None:
        return org.id, ORGANIZATION
    return (None if data["all_users"] else _user(data["user"]).id if "user" in data else actor.id), USER


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
    owner = service.owner_of(service.user_of(context)) if org is None else organizations.owner(org)
    with service.ckan_errors():
        offered = access.flat(access.grantable(service.user_of(context)) if org is None else access.for_org(org))
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
            grantable=offered,
        )
    return {**issued.info.as_dict(), "token": issued.secret}


@tk.side_effect_free
def mltoken_list(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """List ML API tokens: the caller's own; a sysadmin may name any ``user`` or ask for ``all_users``.

    :param user: user name or id (optional; default: the caller)
    :param all_users: sysadmins only, every user's tokens (default False)
    :param include_inactive: include revoked and expired tokens (default True)
    :param owner_org: or an organization's name or id: its tokens (its admins and sysadmins)
    :param unused: only active tokens neither used nor created within ``ckanext.mltokens.unused_after``,
        longest unused first (default False)
    """
    tk.check_access("mltoken_list", context, data_dict)
    data = _validated(data_dict, schema.mltoken_list(), context)
    _one_owner(data, "user", "all_users")
    actor, org = _acting(context, data)
    owner_id, kind = _listed_owner(data, actor, org)
    idle = service.unused_after() if data["unused"] else None
    with service.ckan_errors():
        tokens = service.lifecycle().list(actor, owner_id, data["include_inactive"], owner_kind=kind, idle=idle)
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


def _reissued(context: Context, data_dict: DataDict, action: str) -> dict[str, Any]:
    """Renew or rotate (`action`): a new token string for the same token, if its owner may still
    grant every role it holds."""
    tk.check_access(action, context, data_dict)
    data = _validated(data_dict, getattr(schema, action)(), context)
    ttl, fields = _ttl(data)
    actor, _org = _acting(context, data)
    lifecycle = service.lifecycle()
    reissue = lifecycle.rotate if action == "mltoken_rotate" else lifecycle.renew
    with service.ckan_errors(fields):
        issued = reissue(data["id"], actor, ttl, grantable=access.grantable_for_owner)
    return {**issued.info.as_dict(), "token": issued.secret}


@csrf.required
def mltoken_renew(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """Give a token a new expiry; the previous token string stops working.

    Refused when the token holds a role its owner may no longer grant (access changed).

    :param id: the token id
    :param ttl: new lifetime from now (optional; default: the token's current lifetime)
    :param expires: or the new expiry, an ISO 8601 date (00:00 UTC) or date-time
    :param owner_org: for an organization's token, the organization's name or id
    :returns: the token's details and, once only, the new token string as ``token``
    """
    return _reissued(context, data_dict, "mltoken_renew")


@csrf.required
def mltoken_rotate(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """Renew a token without downtime: the previous token string keeps working for the
    ``ckanext.mltokens.rotate_grace`` period, while clients move to the new one.

    :param id: the token id
    :param ttl: new lifetime from now (optional; default: the token's current lifetime)
    :param expires: or the new expiry, an ISO 8601 date (00:00 UTC) or date-time
    :param owner_org: for an organization's token, the organization's name or id
    :returns: the token's details, with ``previous_valid_until`` (when the previous token string
        stops working), and, once only, the new token string as ``token``
    """
    return _reissued(context, data_dict, "mltoken_rotate")


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
    """Revoke every active token of a user (one's own, or anybody's for a sysadmin) or of an
    organization, or only the listed ones: all in one transaction, so all of them or none.

    :param user: user name or id (optional; default: the caller)
    :param owner_org: or an organization's name or id: its tokens (its admins and sysadmins)
    :param all_users: sysadmins, with ``ids``: the listed tokens of any owner
    :param ids: only these tokens (1 to 200 ids); the owner's others, and ids that are not the
        owner's, revoked already or unknown, are left alone
    :param reason: optional, kept with the revocations
    :returns: the revoked tokens
    """
    tk.check_access("mltoken_revoke_all", context, data_dict)
    data = _validated(data_dict, schema.mltoken_revoke_all(), context)
    _one_owner(data, "user", "all_users")
    if data["all_users"] and ("user" in data or "ids" not in data):
        message = tk._("With all_users, name the tokens (ids) and no user.")
        raise service.validation_error({"all_users": [message]}, InvalidInput.code)
    actor, org = _acting(context, data)
    with service.ckan_errors():
        if data["all_users"]:
            revoked = service.lifecycle().revoke_each(dict.fromkeys(data["ids"], data.get("reason")), actor)
        else:
            owner_id, kind = (
                (org.id, ORGANIZATION)
                if org is not None
                else ((_user(data["user"]).id if "user" in data else actor.id), USER)
            )
            revoked = service.lifecycle().revoke_all(
                owner_id, actor, data.get("reason"), owner_kind=kind, ids=data.get("ids")
            )
    return [t.as_dict() for t in revoked]


@csrf.required
def mltoken_patch(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """Change a token's settings: for now, whether its owner is e-mailed before it expires.

    :param id: the token id
    :param expiry_notices: true or false (``ckan mltokens notify`` sends the warnings)
    :param owner_org: for an organization's token, the organization's name or id
    :returns: the token's details
    """
    tk.check_access("mltoken_patch", context, data_dict)
    data = _validated(data_dict, schema.mltoken_patch(), context)
    actor, _org = _acting(context, data)
    with service.ckan_errors():
        return service.lifecycle().set_expiry_notices(data["id"], actor, data["expiry_notices"]).as_dict()


@tk.side_effect_free
def mltoken_usage(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """Requests per UTC day of one token, or of a user's tokens, over the last ``days`` days.

    :param id: one token's id (optional; not with ``user`` or ``all_users``)
    :param user: user name or id (optional; default: the caller; another user's for sysadmins)
    :param all_users: sysadmins only, every user's tokens (default False)
    :param days: the period, today included (default 30; at most ``usage_retention``)
    :param owner_org: or an organization's name or id: its tokens (its admins and sysadmins)
    :returns: per token: id, name, owner, status, last_used_at, use_count (all time), today,
        and ``daily``, a list of {date, count} from the oldest day to today
    """
    tk.check_access("mltoken_usage", context, data_dict)
    data = _validated(data_dict, schema.mltoken_usage(), context)
    if "id" in data and ("user" in data or data["all_users"]):
        raise service.validation_error({"id": [tk._("Give either id or user, not both.")]}, InvalidInput.code)
    _one_owner(data, "user", "all_users")
    actor, org = _acting(context, data)
    owner_id, kind = _listed_owner(data, actor, org)
    with service.ckan_errors():
        usage = service.lifecycle().usage(
            actor, token_id=data.get("id"), owner_id=owner_id, days=data["days"], owner_kind=kind
        )
    return [u.as_dict() for u in usage]


@tk.side_effect_free
def mltoken_roles_list(context: Context, data_dict: DataDict) -> ActionResult.Any:
    """The roles the caller may put on a token, grouped by model (docs/catalogue-access.md).

    A caller without an enabled account at the issuer (Keycloak) is not authorized, with a message saying so.

    :param owner_org: optional, an organization's name or id: the roles its tokens may carry (those of
        its own models)
    :returns: a list of ``{"model_id", "dataset": {"id", "name", "title"} or null, "roles": [...]}``,
        one per model (``model_id`` null for roles naming no model), sorted by title
    """
    tk.check_access("mltoken_roles_list", context, data_dict)
    data = _validated(data_dict, schema.mltoken_roles_list(), context)
    with service.ckan_errors():
        if "owner_org" in data:
            groups = access.for_org(_organization(data["owner_org"]))
        else:
            groups = access.grantable(service.user_of(context))
    return [group.as_dict() for group in groups]


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


def _model_fields_checked(data_dict: DataDict, dataset_id: str | None = None) -> None:
    """A dataset's model fields (catalogue.py) are valid or absent, and its model id is no other
    active dataset's; else a validation error, nothing saved.

    One dataset per model: otherwise anybody who may create a dataset could publish one naming
    somebody else's model and so grant themselves its privileged roles.
    """
    if found := catalogue.errors(data_dict):
        raise tk.ValidationError(found)
    api = catalogue.model_api(data_dict)
    if api is None:
        return
    own = model.Package.get(dataset_id) if dataset_id else None
    others = [p for p, _extras in compat.model_packages({api.model_id}) if own is None or p.id != own.id]
    if others:
        raise tk.ValidationError({catalogue.MODEL_ID: [tk._("Another dataset already publishes this model id.")]})


@dataclass(frozen=True)
class _Published:
    """What of a dataset decides who may reach its model."""

    name: str
    private: bool
    owner_org: str | None
    state: str
    api: catalogue.ModelApi | None


def _published(id_or_name: Any) -> _Published | None:
    package = model.Package.get(id_or_name) if isinstance(id_or_name, str) and id_or_name else None
    if package is None:
        return None
    extras = dict(package.extras)
    return _Published(package.name, package.private, package.owner_org, package.state, catalogue.model_api(extras))


def _models(*datasets: _Published | None) -> dict[str, str]:
    """Model id -> dataset name of the datasets that publish a model."""
    return {d.api.model_id: d.name for d in datasets if d is not None and d.api is not None}


def _change(before: _Published, after: _Published | None) -> str | None:
    """What changed about who may reach the model, in words for the audit reason (None: nothing)."""
    if after is None:
        return f"dataset {before.name} purged"
    changes = []
    if after.state != before.state:
        changes.append(f"state now {after.state}")
    if after.private and not before.private:
        changes.append("made private")
    if after.owner_org != before.owner_org:
        org = model.Group.get(after.owner_org) if after.owner_org else None
        changes.append(f"moved to organization {org.name if org else 'none'}")
    if after.api != before.api:
        changes.append("model fields removed" if after.api is None else "model fields changed")
    return f"dataset {before.name} {', '.join(changes)}" if changes else None


def _fresh(context: Context) -> None:
    """Expire the session's objects, so what follows reads what the action committed.

    CKAN's session keeps objects across commits (`expire_on_commit=False`), and some actions
    change rows behind the objects' back (`bulk_update_private` by a bulk UPDATE; CKAN 2.11's
    extras by deleting rows a package's collection still holds). With `defer_commit` nothing
    has been committed and the session's objects are the change itself: they are kept.
    """
    if not context.get("defer_commit"):
        model.Session.expire_all()


def _enforce(context: Context, revoke: Callable[[], object]) -> None:
    """Revocations after a CKAN change has committed: a token store failure is logged (the CKAN
    change stands) and `ckan mltokens reconcile` catches up."""
    _fresh(context)
    try:
        revoke()
    except TokenServiceError:
        log.exception("tokens could not be checked after an access change in CKAN; run `ckan mltokens reconcile`")


def _after_datasets(original: Action, context: Context, data_dict: DataDict, ids: list[Any]) -> Any:
    """Run a dataset action, then judge the tokens reaching the models of the datasets it changed."""
    before = {id_: _published(id_) for id_ in ids}
    result = original(context, data_dict)
    published = {id_: was for id_, was in before.items() if was is not None and was.api is not None}
    if published:
        _fresh(context)
    for id_, was in published.items():
        now = _published(id_)
        if cause := _change(was, now):
            _enforce(context, lambda was=was, now=now, cause=cause: access.after_model_change(_models(was, now), cause))
    return result


@tk.chained_action
def package_create(original: Action, context: Context, data_dict: DataDict) -> ActionResult.PackageCreate:
    """CKAN's package_create, refusing invalid `model_id` / `model_operations` fields first (after
    the caller's access: a refusal must not tell whether a private dataset publishes a model id)."""
    tk.check_access("package_create", context, data_dict)
    _model_fields_checked(data_dict)
    return original(context, data_dict)


@tk.chained_action
def package_update(original: Action, context: Context, data_dict: DataDict) -> ActionResult.PackageUpdate:
    """CKAN's package_update (and so package_patch): model fields checked first; afterwards, when
    the dataset's privacy, organization, state or model fields changed, the tokens reaching its
    model (old and new) whose owners lost a role are revoked."""
    id_ = data_dict.get("id") or data_dict.get("name")
    existing = model.Package.get(id_) if isinstance(id_, str) and id_ else None
    if existing is not None:  # else CKAN's own action answers (not found)
        tk.check_access("package_update", context, data_dict)
    _model_fields_checked(data_dict, existing.id if existing else None)
    return _after_datasets(original, context, data_dict, [existing.id] if existing else [])


@tk.chained_action
def package_delete(original: Action, context: Context, data_dict: DataDict) -> ActionResult.PackageDelete:
    """CKAN's package_delete; then the tokens reaching the dataset's model are revoked."""
    return _after_datasets(original, context, data_dict, [data_dict.get("id")])


@tk.chained_action
def dataset_purge(original: Action, context: Context, data_dict: DataDict) -> ActionResult.DatasetPurge:
    """CKAN's dataset_purge; then the tokens reaching the dataset's model are revoked."""
    return _after_datasets(original, context, data_dict, [data_dict.get("id")])


@tk.chained_action
def bulk_update_private(original: Action, context: Context, data_dict: DataDict) -> ActionResult.BulkUpdatePrivate:
    """CKAN's bulk_update_private (an organization's bulk "make private"), then as package_update."""
    return _after_datasets(original, context, data_dict, _listed(data_dict.get("datasets")))


@tk.chained_action
def bulk_update_delete(original: Action, context: Context, data_dict: DataDict) -> ActionResult.BulkUpdateDelete:
    """CKAN's bulk_update_delete (an organization's bulk delete), then as package_delete."""
    return _after_datasets(original, context, data_dict, _listed(data_dict.get("datasets")))


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _after_membership(original: Action, context: Context, data_dict: DataDict, cause: str) -> Any:
    """Run a member action; if it changed a user's membership of an organization, judge their tokens."""
    result = original(context, data_dict)
    org = organizations.get(data_dict.get("id"))
    user = model.User.get(data_dict.get("object")) if data_dict.get("object_type") == "user" else None
    if org is not None and user is not None:
        reason = cause.format(user=user.name, org=org.name, capacity=data_dict.get("capacity"))
        _enforce(context, lambda: access.after_user_change(user.id, reason))
    return result


@tk.chained_action
def member_create(original: Action, context: Context, data_dict: DataDict) -> ActionResult.MemberCreate:
    """CKAN's member_create (organization_member_create calls it): a lowered capacity revokes tokens."""
    return _after_membership(original, context, data_dict, "user {user} now {capacity} of organization {org}")


@tk.chained_action
def member_delete(original: Action, context: Context, data_dict: DataDict) -> ActionResult.MemberDelete:
    """CKAN's member_delete (organization_member_delete calls it): the user's tokens are judged."""
    return _after_membership(original, context, data_dict, "user {user} removed from organization {org}")


def _after_collaboration(original: Action, context: Context, data_dict: DataDict, cause: str) -> Any:
    """Run a collaborator action, then judge the user's roles of the dataset's model."""
    dataset = _published(data_dict.get("id"))
    result = original(context, data_dict)
    user = model.User.get(data_dict.get("user_id")) if isinstance(data_dict.get("user_id"), str) else None
    models = _models(dataset)
    if user is not None and models:
        reason = cause.format(user=user.name, dataset=dataset.name, capacity=data_dict.get("capacity"))
        _enforce(context, lambda: access.after_user_change(user.id, reason, models))
    return result


@tk.chained_action
def package_collaborator_create(
    original: Action, context: Context, data_dict: DataDict
) -> ActionResult.PackageCollaboratorCreate:
    """CKAN's package_collaborator_create: a lowered capacity revokes the collaborator's tokens."""
    return _after_collaboration(original, context, data_dict, "user {user} now {capacity} of dataset {dataset}")


@tk.chained_action
def package_collaborator_delete(
    original: Action, context: Context, data_dict: DataDict
) -> ActionResult.PackageCollaboratorDelete:
    """CKAN's package_collaborator_delete: the former collaborator's tokens for the model are judged."""
    return _after_collaboration(
        original, context, data_dict, "user {user} no longer a collaborator of dataset {dataset}"
    )


@tk.chained_action
def user_update(original: Action, context: Context, data_dict: DataDict) -> ActionResult.UserUpdate:
    """CKAN's user_update (and so user_patch): a state or sysadmin change judges the user's tokens."""
    user = model.User.get(data_dict.get("id")) if isinstance(data_dict.get("id"), str) else None
    before = (user.state, user.sysadmin) if user else None
    result = original(context, data_dict)
    if user is not None:
        _fresh(context)
    if user is not None and (user.state, user.sysadmin) != before:
        cause = f"user {user.name} is {user.state}" if user.state != model.State.ACTIVE else f"user {user.name} changed"
        _enforce(context, lambda: access.after_user_change(user.id, cause))
    return result
