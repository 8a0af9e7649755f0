"""Which roles a CKAN user may put on a token, from CKAN's own authorization (docs/catalogue-access.md).

A model is published as a dataset (catalogue.py). A user may grant:

- `model:<id>:<operation>` for a *read operation* (`ckanext.mltokens.read_operations`,
  default `predict`) when CKAN lets them read the dataset (`package_show`);
- every other operation of the model (`train`, ...: the privileged ones) when CKAN lets
  them update it (`package_update`).

CKAN's auth functions decide (public or private, organization capacity, collaborators,
sysadmins); nothing here re-implements membership rules. `ckanext.mltokens.access_mode`
combines this with the issuer's own roles: `ckan`, `issuer` or `both` (the intersection).

When access changes in CKAN, `revoke_lost` revokes the active tokens holding a role their
owner may no longer grant, through the lifecycle's revocation path (logic/action.py hooks
CKAN's actions; `ckan mltokens reconcile` catches up with changes made outside them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass, field

import ckan.model as model
import ckan.plugins as p
import ckan.plugins.toolkit as tk
from sqlalchemy import select

from token_service.errors import ConfigError
from token_service.issuers import ORGANIZATION, USER, Owner
from token_service.lifecycle import Actor, TokenInfo

from . import catalogue, compat, organizations, service

log = logging.getLogger(__name__)

MODES = ("ckan", "issuer", "both")
MAX_REASON = 500  # token_service's limit on a revocation reason
OPERATOR = Actor.operator("ckan access")


def mode() -> str:
    """`ckanext.mltokens.access_mode`; the plugin refuses to start with another value."""
    value = tk.config.get(service.PREFIX + "access_mode")
    if value not in MODES:
        raise ConfigError(f"{service.PREFIX}access_mode: {str(value)[:40]!r} is not one of {', '.join(MODES)}")
    return value


def follows_ckan() -> bool:
    """Whether CKAN's authorization bounds the roles (modes `ckan` and `both`)."""
    return mode() != "issuer"


def read_operations() -> frozenset[str]:
    return frozenset(tk.config.get(service.PREFIX + "read_operations") or ())


def role_model(role: str) -> str | None:
    """The model id a role `model:<id>:<operation>` names (None for other roles)."""
    kind, _, rest = role.partition(":")
    model_id, found, operation = rest.partition(":")
    return model_id if kind == "model" and found and model_id and operation else None


@dataclass(frozen=True)
class ModelDataset:
    """A dataset that publishes a model API (the only one claiming its model id)."""

    id: str
    name: str
    title: str
    owner_org: str | None
    api: catalogue.ModelApi

    @property
    def model_id(self) -> str:
        return self.api.model_id


def model_datasets(model_ids: Collection[str] | None = None) -> dict[str, ModelDataset]:
    """The active datasets with valid model fields, by model id (only `model_ids` when given).

    A model id claimed by two datasets (only possible outside the actions, which refuse a
    second claim) gives nobody its roles: it is logged and left out, never guessed.
    """
    found: dict[str, ModelDataset] = {}
    claimed: set[str] = set()
    for package, extras in compat.model_packages(model_ids):
        api = catalogue.model_api(extras)
        if api is None:
            continue
        if api.model_id in claimed:
            log.warning("model id %r is claimed by more than one dataset; none of them grants it", api.model_id)
            found.pop(api.model_id, None)
            continue
        claimed.add(api.model_id)
        found[api.model_id] = ModelDataset(
            package.id, package.name, package.title or package.name, package.owner_org, api
        )
    return found


def _allowed(action: str, user: model.User, dataset_id: str) -> bool:
    try:
        tk.check_access(action, {"user": user.name, "auth_user_obj": user}, {"id": dataset_id})
    except tk.NotAuthorized:
        return False
    return True


def dataset_roles(user: model.User | None, dataset: ModelDataset) -> frozenset[str]:
    """The roles of `dataset`'s model that CKAN's authorization lets `user` grant."""
    if user is None or user.state != model.State.ACTIVE or not _allowed("package_show", user, dataset.id):
        return frozenset()
    readable = read_operations()
    roles = {role for op, role in zip(dataset.api.operations, dataset.api.roles, strict=True) if op in readable}
    if len(roles) < len(dataset.api.roles) and _allowed("package_update", user, dataset.id):
        roles = set(dataset.api.roles)
    return frozenset(roles)


@dataclass(frozen=True)
class RoleGroup:
    """Roles of one model (or, with `model_id` None, roles naming no model), with its dataset if readable."""

    model_id: str | None
    roles: tuple[str, ...]
    dataset: ModelDataset | None = None

    def as_dict(self) -> dict[str, object]:
        dataset = self.dataset
        return {
            "model_id": self.model_id,
            "roles": list(self.roles),
            "dataset": {"id": dataset.id, "name": dataset.name, "title": dataset.title} if dataset else None,
        }


def grantable(user: model.User) -> list[RoleGroup]:
    """What `user` may put on a token, grouped by model: the access mode applied to CKAN's view
    and the issuer's, narrowed by `role_prefixes`."""
    current = mode()
    datasets = model_datasets()
    roles: set[str] = set()
    if current != "issuer":
        roles = set().union(*(dataset_roles(user, d) for d in datasets.values()))
    if current != "ckan":
        issuer_roles = set(service.lifecycle().grantable_roles(service.owner_of(user)))
        roles = issuer_roles if current == "issuer" else roles & issuer_roles
    shown = (lambda d: _allowed("package_show", user, d.id)) if current == "issuer" else (lambda d: True)
    return _grouped(roles, datasets, shown)


def for_org(org: model.Group) -> list[RoleGroup]:
    """What an organization's tokens may carry (organizations.py): every role of the models its own
    active datasets publish, within the issuer's roles for it unless the mode is `ckan`."""
    datasets = {m: d for m, d in model_datasets().items() if d.owner_org == org.id}
    roles = {role for d in datasets.values() for role in d.api.roles}
    if mode() != "ckan":
        roles &= set(service.lifecycle().grantable_roles(organizations.owner(org)))
    return _grouped(roles, datasets, lambda d: True)


def _grouped(
    roles: Iterable[str], datasets: dict[str, ModelDataset], shown: Callable[[ModelDataset], bool]
) -> list[RoleGroup]:
    """`roles` narrowed by `role_prefixes` and grouped by model, sorted by title; a dataset's title
    only where `shown` lets the caller read it."""
    prefixes = service.role_prefixes()
    by_model: dict[str | None, list[str]] = {}
    for role in sorted(r for r in roles if not prefixes or r.startswith(prefixes)):
        by_model.setdefault(role_model(role), []).append(role)
    groups = []
    for model_id, model_roles in by_model.items():
        dataset = datasets.get(model_id) if model_id else None
        if dataset is not None and not shown(dataset):
            dataset = None
        groups.append(RoleGroup(model_id, tuple(model_roles), dataset))
    return sorted(
        groups, key=lambda g: (g.model_id is None, (g.dataset.title if g.dataset else g.model_id or "").lower())
    )


def flat(groups: Iterable[RoleGroup]) -> frozenset[str]:
    return frozenset(role for group in groups for role in group.roles)


def grantable_for_owner(owner: Owner) -> frozenset[str]:
    """The roles a token's owner may grant now (nothing when the user or organization is gone)."""
    if owner.kind == ORGANIZATION:
        org = organizations.get(owner.id)
        return flat(for_org(org)) if org is not None else frozenset()
    user = model.User.get(owner.id)
    return flat(grantable(user)) if user is not None else frozenset()


# -- when access changes ---------------------------------------------------------------


@dataclass
class Revoked:
    token: TokenInfo
    reason: str


def _standing_decides(dataset: ModelDataset) -> bool:
    """Whether CKAN's answer for `dataset` depends on a user only through `_standings`.

    True with CKAN's own `package_show` and `package_update` auth functions and permission
    labels, for a dataset an organization owns: those read a user's sysadmin flag, their
    memberships of the organization (and of its parents, where roles cascade) and their
    collaboration on the dataset, nothing else. An unowned dataset's rules also read its
    creator and every organization of the user, and another plugin's rules may read anything:
    those are asked owner by owner.
    """
    if dataset.owner_org is None or any(True for _ in p.PluginImplementations(p.IPermissionLabels)):
        return False
    overridden = {"package_show", "package_update"}
    return not any(
        overridden & plugin.get_auth_functions().keys() for plugin in p.PluginImplementations(p.IAuthFunctions)
    )


def _standings(dataset: ModelDataset, users: Collection[model.User]) -> dict[str, Hashable]:
    """Each user's standing towards `dataset` (`_standing_decides`): two queries for all of them."""
    org = model.Group.get(dataset.owner_org)
    groups = [dataset.owner_org] + ([g.id for g in org.get_parent_group_hierarchy(type=org.type)] if org else [])
    ids = [user.id for user in users]
    member = model.Member
    memberships: dict[str, set[tuple[str, str]]] = {}
    for user_id, group_id, capacity in model.Session.execute(
        select(member.table_id, member.group_id, member.capacity).where(
            member.table_name == "user",
            member.state == model.State.ACTIVE,
            member.group_id.in_(groups),
            member.table_id.in_(ids),
        )
    ):
        memberships.setdefault(user_id, set()).add((group_id, capacity))
    collaborator = model.PackageMember
    collaborations = dict(
        model.Session.execute(
            select(collaborator.user_id, collaborator.capacity).where(
                collaborator.package_id == dataset.id, collaborator.user_id.in_(ids)
            )
        ).all()
    )
    return {
        user.id: (bool(user.sysadmin), frozenset(memberships.get(user.id, ())), collaborations.get(user.id))
        for user in users
    }


@dataclass
class _Judge:
    """Decides, per (owner, model), which roles the owner still holds; each pair asked once.

    `settle` answers many users of one model at once: CKAN is asked for one user of each
    standing (`_standings`), not for each user.
    """

    datasets: dict[str, ModelDataset]
    names: dict[str, str] = field(default_factory=dict)  # model id -> dataset name, for models gone
    _held: dict[tuple[str, str, str], frozenset[str]] = field(default_factory=dict)
    _users: dict[str, model.User | None] = field(default_factory=dict)

    def held(self, token: TokenInfo, model_id: str) -> frozenset[str]:
        """The roles of `model_id` the token's owner holds: a user, what CKAN lets them grant; an
        organization, every role of a model its own active dataset publishes."""
        key = (token.owner_kind, token.owner_id, model_id)
        if key not in self._held:
            dataset = self.datasets.get(model_id)
            if dataset is None:
                self._held[key] = frozenset()
            elif token.owner_kind == ORGANIZATION:
                self._held[key] = frozenset(dataset.api.roles) if dataset.owner_org == token.owner_id else frozenset()
            else:
                if token.owner_id not in self._users:
                    self._users[token.owner_id] = model.User.get(token.owner_id)
                self._held[key] = dataset_roles(self._users[token.owner_id], dataset)
        return self._held[key]

    def settle(self, model_id: str, user_ids: Collection[str]) -> None:
        """Answer `held` for these users' tokens of `model_id` together, where their standing decides."""
        dataset = self.datasets.get(model_id)
        pending = sorted({i for i in user_ids if (USER, i, model_id) not in self._held})
        if dataset is None or len(pending) < 2 or not _standing_decides(dataset):
            return
        unknown = [i for i in pending if i not in self._users]
        if unknown:
            self._users.update(dict.fromkeys(unknown))
            self._users.update(
                (u.id, u) for u in model.Session.scalars(select(model.User).where(model.User.id.in_(unknown)))
            )
        active = [u for i in pending if (u := self._users[i]) is not None and u.state == model.State.ACTIVE]
        answers: dict[Hashable, frozenset[str]] = {}
        for user_id, standing in _standings(dataset, active).items():
            if standing not in answers:
                answers[standing] = dataset_roles(self._users[user_id], dataset)
            self._held[(USER, user_id, model_id)] = answers[standing]

    def dataset_name(self, model_id: str) -> str:
        dataset = self.datasets.get(model_id)
        return dataset.name if dataset else self.names.get(model_id, f"(none publishes model {model_id})")


def revoke_lost(
    tokens: Iterable[TokenInfo],
    cause: str,
    models: Collection[str] | None = None,
    names: dict[str, str] | None = None,
    dry_run: bool = False,
) -> list[Revoked]:
    """Revoke each token holding a model role its owner may no longer grant in CKAN.

    Only roles of `models` are judged (all the token's model roles when None); roles naming
    no model are not CKAN's to judge. `names` gives the dataset names of models no dataset
    publishes any more (deleted, purged, field removed), for the audit reason.
    """
    tokens = list(tokens)
    if not tokens or not follows_ckan():
        return []
    scope = None if models is None else set(models)

    def judged(token: TokenInfo) -> Iterable[tuple[str, str]]:
        return ((m, r) for r in token.roles if (m := role_model(r)) and (scope is None or m in scope))

    judge = _Judge(model_datasets({m for token in tokens for m, _ in judged(token)}), dict(names or {}))
    users: dict[str, set[str]] = {}
    for token in tokens:
        for model_id, _ in judged(token) if token.owner_kind == USER else ():
            users.setdefault(model_id, set()).add(token.owner_id)
    for model_id, user_ids in users.items():
        judge.settle(model_id, user_ids)
    reasons: dict[str, str] = {}
    for token in tokens:
        lost: dict[str, list[str]] = {}
        for model_id, role in judged(token):
            if role not in judge.held(token, model_id):
                lost.setdefault(model_id, []).append(role)
        if lost:
            detail = "; ".join(f"dataset {judge.dataset_name(m)}: {', '.join(roles)}" for m, roles in lost.items())
            reason = f"CKAN access changed ({cause}); no longer allowed: {detail}"
            reasons[token.id] = reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"
    # One transaction for all of them; a token revoked (or pruned) meanwhile, by its owner or
    # another judge, is skipped.
    done = set(reasons) if dry_run else {info.id for info in service.lifecycle().revoke_each(reasons, OPERATOR)}
    revoked = [Revoked(token, reasons[token.id]) for token in tokens if token.id in done]
    for item in revoked:
        log.info(
            "%s token %s of %s: %s",
            "would revoke" if dry_run else "revoked",
            item.token.id,
            item.token.owner_id,
            item.reason,
        )
    return revoked


def after_user_change(user_id: str, cause: str, models: dict[str, str] | None = None) -> list[Revoked]:
    """A user's memberships, capacity, state or rights changed: judge their active tokens (only
    their roles of `models`, model id -> dataset name, when the change concerns those datasets)."""
    if not follows_ckan() or models == {}:
        return []
    owner = model.User.get(user_id)
    tokens = service.lifecycle().list(OPERATOR, owner.id if owner else user_id, include_inactive=False)
    return revoke_lost(tokens, cause, models, models)


def after_model_change(models: dict[str, str], cause: str) -> list[Revoked]:
    """Datasets publishing `models` (model id -> dataset name) changed: judge the tokens reaching them."""
    if not models or not follows_ckan():
        return []
    return revoke_lost(service.lifecycle().active_reaching(models), cause, models, models)
