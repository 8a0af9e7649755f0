"""Organization tokens (issue 14 item 5): tokens owned by a CKAN organization, not by a person.

An organization's tokens are managed by whoever CKAN lets manage the organization
(`organization_update`: its admins, and sysadmins), so they outlive the person who made
them. They may carry the roles of the models the organization's own datasets describe
(catalogue.py), within what the issuer grants (access.for_org; docs/models-in-the-catalogue.md,
"Organization tokens").
"""

from __future__ import annotations

from typing import Any

import ckan.authz as authz
import ckan.model as model
import ckan.plugins.toolkit as tk
from flask import has_request_context

from token_service.issuers import ORGANIZATION, Owner

from . import service
from .logic.validators import mltokens_org


def get(name_or_id: Any) -> model.Group | None:
    """The active organization `name_or_id` names, or None (also for a group, or malformed input)."""
    try:
        key = mltokens_org(name_or_id)  # nothing odd (NUL, over-long text) reaches CKAN's query
    except tk.Invalid:
        return None
    org = model.Group.get(key)
    if org is None or not org.is_organization or org.state != model.State.ACTIVE:
        return None
    return org


def owner(org: model.Group) -> Owner:
    return Owner(id=org.id, name=org.name, kind=ORGANIZATION)


def may_manage(user_name: str, org: model.Group) -> bool:
    """Whether CKAN lets `user_name` manage the organization (admins and sysadmins, as for `organization_update`)."""
    return authz.has_user_permission_for_group_or_org(org.id, user_name, "update")


def admins(org: model.Group) -> list[model.User]:
    """The organization's active admins, who manage its tokens: told what concerns them (leak notices)."""
    return (
        model.Session.query(model.User)
        .join(model.Member, model.Member.table_id == model.User.id)
        .filter(
            model.Member.group_id == org.id,
            model.Member.table_name == "user",
            model.Member.capacity == "admin",
            model.Member.state == model.State.ACTIVE,
            model.User.state == model.State.ACTIVE,
        )
        .order_by(model.User.name)
        .all()
    )


def revoke_all(org: model.Group, reason: str, source: str) -> None:
    """Revoke every active token of the organization, in the name of the signed-in user (if any)."""
    caller = tk.current_user if has_request_context() and tk.current_user.is_authenticated else None
    actor = service.deleting_actor(caller, source)
    service.lifecycle().revoke_all(org.id, actor, reason, owner_kind=ORGANIZATION)
