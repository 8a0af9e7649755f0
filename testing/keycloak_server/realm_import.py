"""Realm import (a full RealmRepresentation on realm creation), partial import and
partial export, for the parts of a realm this server models: client scopes, roles
and composites, clients, groups, users (credentials, role mappings, group membership,
service-account links) and scope mappings.

As in Keycloak's import, an imported user gets only the roles listed for it (no
implicit default roles), builtin clients and roles named in the file are updated in
place, and a service-account-enabled client whose ``service-account-*`` user is not
in the file gets one created.
"""

from __future__ import annotations

import copy
from typing import Any

from . import mappers
from . import representations as reps
from .errors import bad_request, conflict
from .realm import Client, Group, Realm, Role, User

MASKED_SECRET = "**********"


def validate(rep: dict[str, Any]) -> None:
    """Check the nested representations of a realm or partial import."""
    roles = rep.get("roles") or {}
    reps.check_list(roles.get("realm") or [], reps.ROLE_FIELDS)
    for client_roles in (roles.get("client") or {}).values():
        reps.check_list(client_roles, reps.ROLE_FIELDS)
    for kind, fields in (
        ("clients", reps.CLIENT_FIELDS),
        ("clientScopes", reps.CLIENT_SCOPE_FIELDS),
    ):
        for item in reps.check_list(rep.get(kind) or [], fields):
            for mapper in reps.check_list(item.get("protocolMappers") or [], reps.PROTOCOL_MAPPER_FIELDS):
                mappers.check_supported(mapper.get("protocolMapper", ""))
    for user in reps.check_list(rep.get("users") or [], reps.USER_FIELDS):
        reps.check_list(user.get("credentials") or [], reps.CREDENTIAL_FIELDS)
    stack = list(rep.get("groups") or [])
    while stack:
        group = reps.check_object(stack.pop(), reps.GROUP_FIELDS)
        stack.extend(group.get("subGroups") or [])


def _role(realm: Realm, name: str, client: Client | None = None) -> Role:
    role = realm.find_role(name, client)
    if role is None:
        owner = f" of client {client.client_id}" if client else ""
        raise bad_request(f"Role not found: {name}{owner}")
    return role


def _client(realm: Realm, client_id: str) -> Client:
    client = realm.client_by_client_id(client_id)
    if client is None:
        raise bad_request(f"Client not found: {client_id}")
    return client


def _role_ids(realm: Realm, realm_roles: list[str] | None, client_roles: dict[str, list[str]] | None) -> set[str]:
    """Ids of roles named as ``realmRoles`` / ``clientRoles`` in a representation."""
    ids = {_role(realm, name).id for name in realm_roles or []}
    for client_id, names in (client_roles or {}).items():
        client = _client(realm, client_id)
        ids |= {_role(realm, name, client).id for name in names}
    return ids


def _upsert_role(realm: Realm, rep: dict[str, Any], client: Client | None) -> Role:
    role = realm.find_role(rep["name"], client)
    if role is None:
        return realm.add_role(
            rep["name"],
            client=client,
            description=rep.get("description"),
            attributes=rep.get("attributes"),
            role_id=rep.get("id"),
        )
    if "description" in rep:
        role.description = rep["description"]
    if rep.get("attributes") is not None:
        role.attributes = copy.deepcopy(rep["attributes"])
    return role


def _set_composites(realm: Realm, role: Role, rep: dict[str, Any]) -> None:
    composites = rep.get("composites") or {}
    role.composites |= _role_ids(realm, composites.get("realm"), composites.get("client"))


def _import_client(realm: Realm, rep: dict[str, Any]) -> Client:
    client = realm.client_by_client_id(rep["clientId"])
    if client is None:
        return realm.add_client(rep, service_account=False)
    realm.update_client(client, rep)
    if rep.get("protocolMappers") is not None:
        client.mappers.clear()
        for mapper in rep["protocolMappers"]:
            realm.add_mapper(client, mapper)
    for key, target in (
        ("defaultClientScopes", client.default_scopes),
        ("optionalClientScopes", client.optional_scopes),
    ):
        if rep.get(key) is not None:
            target[:] = [s.id for s in map(realm.scope_by_name, rep[key]) if s is not None]
    return client


def _import_group(realm: Realm, rep: dict[str, Any], parent: Group | None) -> Group:
    group = realm.add_group(rep, parent)
    group.role_ids |= _role_ids(realm, rep.get("realmRoles"), rep.get("clientRoles"))
    for child in rep.get("subGroups") or []:
        _import_group(realm, child, group)
    return group


def _import_user(realm: Realm, rep: dict[str, Any]) -> User:
    user = realm.add_user(rep)
    user.role_ids = _role_ids(realm, rep.get("realmRoles"), rep.get("clientRoles"))
    by_path = {realm.group_path(g): g.id for g in realm.groups.values()}
    for path in rep.get("groups") or []:
        if path not in by_path:
            raise bad_request(f"Group not found: {path}")
        user.group_ids.add(by_path[path])
    if rep.get("serviceAccountClientId"):
        realm.enable_service_account(_client(realm, rep["serviceAccountClientId"]), user)
    return user


def import_contents(realm: Realm, rep: dict[str, Any]) -> None:
    """Import the contents of a full RealmRepresentation into a new realm."""
    for scope_rep in rep.get("clientScopes") or []:
        scope = realm.scope_by_name(scope_rep.get("name", ""))
        if scope is None:
            realm.add_client_scope(scope_rep)
        else:
            realm.update_client_scope(scope, scope_rep)
    for key in ("defaultDefaultClientScopes", "defaultOptionalClientScopes"):
        if rep.get(key) is not None:
            ids = [s.id for s in map(realm.scope_by_name, rep[key]) if s is not None]
            target = (
                realm.default_default_scopes if key == "defaultDefaultClientScopes" else realm.default_optional_scopes
            )
            target[:] = ids
    roles = rep.get("roles") or {}
    realm_roles = [(r, _upsert_role(realm, r, None)) for r in roles.get("realm") or []]
    for client_rep in rep.get("clients") or []:
        _import_client(realm, client_rep)
    client_roles = [
        (r, _upsert_role(realm, r, _client(realm, client_id)))
        for client_id, role_reps in (roles.get("client") or {}).items()
        for r in role_reps
    ]
    for role_rep, role in [*realm_roles, *client_roles]:
        _set_composites(realm, role, role_rep)
    for group_rep in rep.get("groups") or []:
        _import_group(realm, group_rep, None)
    for user_rep in rep.get("users") or []:
        _import_user(realm, user_rep)
    for client in realm.clients.values():
        if client.rep.get("serviceAccountsEnabled") and client.service_account_user is None:
            realm.enable_service_account(client)
    for mapping in rep.get("scopeMappings") or []:
        _scope_mapping(realm, mapping, None)
    for owner_id, mappings in (rep.get("clientScopeMappings") or {}).items():
        owner = _client(realm, owner_id)
        for mapping in mappings:
            _scope_mapping(realm, mapping, owner)


def _scope_mapping(realm: Realm, mapping: dict[str, Any], owner: Client | None) -> None:
    role_ids = {_role(realm, name, owner).id for name in mapping.get("roles") or []}
    if mapping.get("client"):
        _client(realm, mapping["client"]).scope_role_ids.update(role_ids)
    elif mapping.get("clientScope"):
        scope = realm.scope_by_name(mapping["clientScope"])
        if scope is None:
            raise bad_request(f"Client scope not found: {mapping['clientScope']}")
        scope.role_ids.update(role_ids)


def partial_import(realm: Realm, rep: dict[str, Any]) -> dict[str, Any]:
    """``POST .../partialImport``: add realm roles, client roles, clients, groups and
    users; ``ifResourceExists`` FAIL (default, 409), SKIP or OVERWRITE."""
    policy = rep.get("ifResourceExists") or "FAIL"
    if policy not in ("FAIL", "SKIP", "OVERWRITE"):
        raise bad_request(f"Unknown policy: {policy}")
    results: list[dict[str, Any]] = []

    def handle(kind: str, name: str, existing: Any, remove: Any, create: Any) -> None:
        if existing is not None:
            if policy == "FAIL":
                raise conflict(f"{kind.replace('_', ' ').title()} '{name}' already exists")
            if policy == "SKIP":
                results.append(
                    {
                        "action": "SKIPPED",
                        "resourceType": kind,
                        "resourceName": name,
                        "id": getattr(existing, "id", None),
                    }
                )
                return
            remove(existing)
        created = create()
        results.append(
            {
                "action": "OVERWRITTEN" if existing is not None else "ADDED",
                "resourceType": kind,
                "resourceName": name,
                "id": created.id,
            }
        )

    roles = rep.get("roles") or {}
    for role_rep in roles.get("realm") or []:
        handle(
            "REALM_ROLE",
            role_rep["name"],
            realm.realm_role(role_rep["name"]),
            realm.delete_role,
            lambda r=role_rep: _upsert_role(realm, r, None),
        )
    for client_rep in rep.get("clients") or []:
        handle(
            "CLIENT",
            client_rep["clientId"],
            realm.client_by_client_id(client_rep["clientId"]),
            realm.delete_client,
            lambda c=client_rep: realm.add_client(c),
        )
    for client_id, role_reps in (roles.get("client") or {}).items():
        owner = _client(realm, client_id)
        for role_rep in role_reps:
            handle(
                "CLIENT_ROLE",
                role_rep["name"],
                realm.find_role(role_rep["name"], owner),
                realm.delete_role,
                lambda r=role_rep, o=owner: _upsert_role(realm, r, o),
            )
    for group_rep in rep.get("groups") or []:
        existing = next((g for g in realm.children(None) if g.name == group_rep.get("name")), None)
        handle(
            "GROUP",
            group_rep.get("name", ""),
            existing,
            realm.delete_group,
            lambda g=group_rep: _import_group(realm, g, None),
        )
    for user_rep in rep.get("users") or []:
        username = str(user_rep.get("username") or "")
        handle(
            "USER",
            username,
            realm.user_by_username(username),
            realm.delete_user,
            lambda u=user_rep: _import_user(realm, u),
        )
    counts = {a: sum(r["action"] == a for r in results) for a in ("OVERWRITTEN", "ADDED", "SKIPPED")}
    return {
        "overwritten": counts["OVERWRITTEN"],
        "added": counts["ADDED"],
        "skipped": counts["SKIPPED"],
        "results": results,
    }


def _role_export(realm: Realm, role: Role) -> dict[str, Any]:
    rep = role.to_rep(brief=False)
    if role.composites:
        members = [realm.roles[i] for i in role.composites if i in realm.roles]
        composites: dict[str, Any] = {}
        realm_names = sorted(r.name for r in members if r.client_uuid is None)
        if realm_names:
            composites["realm"] = realm_names
        by_client: dict[str, list[str]] = {}
        for member in members:
            if member.client_uuid is not None:
                by_client.setdefault(realm.clients[member.client_uuid].client_id, []).append(member.name)
        if by_client:
            composites["client"] = {k: sorted(v) for k, v in by_client.items()}
        rep["composites"] = composites
    return rep


def _group_export(realm: Realm, group: Group) -> dict[str, Any]:
    rep = realm.group_rep(group, brief=False)
    rep.pop("access", None)
    rep["subGroups"] = [_group_export(realm, g) for g in realm.children(group)]
    return rep


def partial_export(realm: Realm, clients: bool, groups_and_roles: bool) -> dict[str, Any]:
    """``POST .../partial-export``: the realm, optionally its clients (secrets masked)
    and its groups and roles; users are never exported."""
    rep = realm.to_rep()
    rep["clientScopes"] = [s.to_rep() for s in realm.client_scopes.values()]
    rep["defaultDefaultClientScopes"] = [realm.client_scopes[i].name for i in realm.default_default_scopes]
    rep["defaultOptionalClientScopes"] = [realm.client_scopes[i].name for i in realm.default_optional_scopes]
    if groups_and_roles:
        by_client: dict[str, list[dict[str, Any]]] = {}
        for role in realm.roles.values():
            if role.client_uuid is not None:
                owner = realm.clients[role.client_uuid].client_id
                by_client.setdefault(owner, []).append(_role_export(realm, role))
        rep["roles"] = {
            "realm": [_role_export(realm, r) for r in realm.realm_roles()],
            "client": by_client,
        }
        rep["groups"] = [_group_export(realm, g) for g in realm.children(None)]
    if clients:
        exported = []
        for client in realm.clients.values():
            client_rep = realm.client_rep(client)
            client_rep.pop("access", None)
            if "secret" in client_rep:
                client_rep["secret"] = MASKED_SECRET
            exported.append(client_rep)
        rep["clients"] = exported
    return rep
