"""Keycloak Admin REST API handlers: realms (with import and export), clients,
client secrets, service accounts, protocol mappers, client scopes, roles, role and
scope mappings, users and groups.

Every call needs a bearer token of some realm (401 without one) and the
realm-management roles Keycloak requires for it (403 otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from werkzeug.wrappers import Request, Response

from . import mappers, realm_import
from . import representations as reps
from .errors import KeycloakHTTPError, bad_request, forbidden, not_found, unauthorized, web_error
from .oidc import bearer_claims
from .realm import Client, ClientScope, Realm, Role, User, new_secret
from .responses import created, json_response, no_content
from .store import Store

VIEW_OF = {
    "manage-realm": "view-realm",
    "manage-clients": "view-clients",
    "manage-users": "view-users",
}
IMPLIED = {"view-clients": ("query-clients",), "view-users": ("query-users",)}


def _flag(request: Request, name: str, default: bool) -> bool:
    value = request.args.get(name)
    if value is None:
        return default
    return value.lower() == "true"


def _page(items: list[Any], request: Request, default_max: int | None) -> list[Any]:
    first = max(int(request.args.get("first") or 0), 0)
    raw_max = request.args.get("max")
    maximum = int(raw_max) if raw_max not in (None, "") else default_max
    if maximum is not None and maximum >= 0:
        return items[first : first + maximum]
    return items[first:]


@dataclass
class Caller:
    """The authenticated admin: the realm that issued the token and its user."""

    realm: Realm
    user: User


class AdminAPI:
    """The Admin REST API over a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- authentication and permissions -------------------------------------

    def caller(self, request: Request) -> Caller:
        """Authenticate the bearer token against the realm named in its ``iss``."""
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            raise unauthorized()
        try:
            unverified = jwt.decode(header[7:].strip(), options={"verify_signature": False})
        except jwt.PyJWTError:
            raise unauthorized() from None
        issuer = str(unverified.get("iss", ""))
        realm = self.store.realms.get(issuer.rsplit("/realms/", 1)[-1]) if "/realms/" in issuer else None
        claims = bearer_claims(realm, request) if realm is not None else None
        if realm is None or claims is None:
            raise unauthorized()
        return Caller(realm, realm.users[claims["sub"]])

    def roles_over(self, caller: Caller, realm: Realm) -> set[str]:
        held = self.store.admin_roles(caller.realm, caller.user, realm.name)
        for manage, view in VIEW_OF.items():
            if manage in held:
                held.add(view)
        for view, implied in IMPLIED.items():
            if view in held:
                held.update(implied)
        return held

    def require(self, caller: Caller, realm: Realm, *any_of: str) -> None:
        """403 unless the caller holds one of ``any_of`` over ``realm``."""
        held = self.roles_over(caller, realm)
        if not held or (any_of and not held.intersection(any_of)):
            raise forbidden()

    def require_map_role(self, caller: Caller, realm: Realm, role: Role) -> None:
        """Mapping an admin (management client) role needs holding it, as in Keycloak."""
        self.require(caller, realm, "manage-users")
        management = realm.management_client.id
        if role.client_uuid == management and caller.realm is realm:
            held = caller.realm.effective_roles(caller.user)
            if role.id not in held:
                raise forbidden()

    # -- lookups --------------------------------------------------------------

    def realm(self, name: str) -> Realm:
        return self.store.realm_or_404(name)

    @staticmethod
    def role_by_name(realm: Realm, name: str, client: Client | None = None) -> Role:
        role = realm.find_role(name, client)
        if role is None:
            raise not_found("Could not find role")
        return role

    @staticmethod
    def role_by_id(realm: Realm, role_id: str) -> Role:
        role = realm.roles.get(role_id)
        if role is None:
            raise not_found("Could not find role with id")
        return role

    @staticmethod
    def body(request: Request, fields: frozenset[str]) -> dict[str, Any]:
        return reps.check_object(reps.parse_json(request.get_data()), fields)

    @staticmethod
    def body_list(request: Request, fields: frozenset[str]) -> list[dict[str, Any]]:
        return reps.check_list(reps.parse_json(request.get_data()), fields)

    # -- realms ---------------------------------------------------------------

    def list_realms(self, caller: Caller, request: Request) -> Response:
        brief = _flag(request, "briefRepresentation", False)
        visible = [r for r in self.store.realms.values() if self.roles_over(caller, r)]
        if not visible and not self.store.can_create_realm(caller.realm, caller.user):
            raise forbidden()
        if brief:
            return json_response([{"id": r.id, "realm": r.name} for r in visible])
        return json_response([r.to_rep() for r in visible])

    def create_realm(self, caller: Caller, request: Request, base_url: str) -> Response:
        if not self.store.can_create_realm(caller.realm, caller.user):
            raise forbidden()
        rep = self.body(request, reps.REALM_FIELDS)
        realm = self.store.create_realm(rep)
        return created(f"{base_url}/admin/realms/{realm.name}")

    def get_realm(self, caller: Caller, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm)
        if "view-realm" in self.roles_over(caller, realm):
            return json_response(realm.to_rep())
        return json_response({"id": realm.id, "realm": realm.name})

    def update_realm(self, caller: Caller, request: Request, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "manage-realm")
        rep = self.body(request, reps.REALM_FIELDS)
        if rep.get("realm") and rep["realm"] != realm.name:
            raise bad_request("Realm name cannot be changed by this server")
        realm.update(rep)
        return no_content()

    def delete_realm(self, caller: Caller, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "manage-realm")
        self.store.delete_realm(realm.name)
        return no_content()

    def partial_import(self, caller: Caller, request: Request, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "manage-realm")
        rep = self.body(request, reps.PARTIAL_IMPORT_FIELDS)
        realm_import.validate(rep)
        return json_response(realm_import.partial_import(realm, rep))

    def partial_export(self, caller: Caller, request: Request, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "manage-realm")
        return json_response(
            realm_import.partial_export(
                realm,
                clients=_flag(request, "exportClients", False),
                groups_and_roles=_flag(request, "exportGroupsAndRoles", False),
            )
        )

    def get_user_profile(self, caller: Caller, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm)
        return json_response(realm.user_profile)

    def update_user_profile(self, caller: Caller, request: Request, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "manage-realm")
        realm.user_profile = self.body(request, reps.USER_PROFILE_FIELDS)
        return json_response(realm.user_profile)

    # -- clients --------------------------------------------------------------

    def list_clients(self, caller: Caller, request: Request, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "view-clients", "query-clients")
        full = "view-clients" in self.roles_over(caller, realm)
        wanted = request.args.get("clientId")
        search = _flag(request, "search", False)
        clients = sorted(realm.clients.values(), key=lambda c: c.client_id)
        if wanted is not None:
            clients = [
                c for c in clients if (wanted.lower() in c.client_id.lower() if search else c.client_id == wanted)
            ]
        clients = _page(clients, request, None)
        if full:
            return json_response([realm.client_rep(c) for c in clients])
        return json_response([{"id": c.id, "clientId": c.client_id} for c in clients])

    def create_client(self, caller: Caller, request: Request, base_url: str, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "manage-clients", "create-client")
        rep = self.body(request, reps.CLIENT_FIELDS)
        if not rep.get("clientId"):
            raise bad_request("Client id cannot be empty")
        for mapper in rep.get("protocolMappers") or []:
            reps.check_object(mapper, reps.PROTOCOL_MAPPER_FIELDS)
            mappers.check_supported(mapper.get("protocolMapper", ""))
        client = realm.add_client(rep)
        return created(f"{base_url}/admin/realms/{realm.name}/clients/{client.id}")

    def client(self, caller: Caller, realm_name: str, client_uuid: str, *perms: str) -> tuple[Realm, Client]:
        realm = self.realm(realm_name)
        self.require(caller, realm, *(perms or ("view-clients",)))
        return realm, realm.client_or_404(client_uuid)

    def get_client(self, caller: Caller, realm_name: str, client_uuid: str) -> Response:
        realm, client = self.client(caller, realm_name, client_uuid)
        return json_response(realm.client_rep(client))

    def update_client(self, caller: Caller, request: Request, realm_name: str, client_uuid: str) -> Response:
        realm, client = self.client(caller, realm_name, client_uuid, "manage-clients")
        rep = self.body(request, reps.CLIENT_FIELDS)
        realm.update_client(client, rep)
        return no_content()

    def delete_client(self, caller: Caller, realm_name: str, client_uuid: str) -> Response:
        realm, client = self.client(caller, realm_name, client_uuid, "manage-clients")
        realm.delete_client(client)
        return no_content()

    @staticmethod
    def _secret_rep(client: Client) -> dict[str, Any]:
        rep: dict[str, Any] = {"type": "secret"}
        if client.secret is not None:
            rep["value"] = client.secret
        return rep

    def get_client_secret(self, caller: Caller, realm_name: str, client_uuid: str) -> Response:
        _, client = self.client(caller, realm_name, client_uuid)
        return json_response(self._secret_rep(client))

    def regenerate_client_secret(self, caller: Caller, realm_name: str, client_uuid: str) -> Response:
        _, client = self.client(caller, realm_name, client_uuid, "manage-clients")
        if client.public or client.rep.get("bearerOnly"):
            raise bad_request("Public clients do not have a secret")
        client.secret = new_secret()
        return json_response(self._secret_rep(client))

    def service_account_user(self, caller: Caller, realm_name: str, client_uuid: str) -> Response:
        realm, client = self.client(caller, realm_name, client_uuid)
        user = realm.users.get(client.service_account_user or "")
        if user is None or not client.rep.get("serviceAccountsEnabled"):
            raise web_error(400, f"Service account not enabled for the client '{client.client_id}'")
        # Keycloak answers this one without `access` and `serviceAccountClientId`.
        rep = realm.user_rep(user)
        for key in ("access", "serviceAccountClientId"):
            rep.pop(key, None)
        return json_response(rep)

    def client_certificate(self, caller: Caller, realm_name: str, client_uuid: str, attr: str) -> Response:
        """Key material stored in ``<attr>.*`` client attributes (empty when none)."""
        _, client = self.client(caller, realm_name, client_uuid)
        rep = {}
        for suffix, key in (
            ("private.key", "privateKey"),
            ("public.key", "publicKey"),
            ("certificate", "certificate"),
            ("kid", "kid"),
        ):
            value = client.attributes.get(f"{attr}.{suffix}")
            if value:
                rep[key] = value
        return json_response(rep)

    # -- protocol mappers (of clients and of client scopes) ----------------------

    def _mapper_owner(
        self,
        caller: Caller,
        realm_name: str,
        client_uuid: str | None,
        scope_id: str | None,
        manage: bool,
    ) -> tuple[Realm, Client | ClientScope, str]:
        """The client or client scope addressed, and its admin URL path."""
        realm = self.realm(realm_name)
        self.require(caller, realm, "manage-clients" if manage else "view-clients")
        if client_uuid is not None:
            client = realm.client_or_404(client_uuid)
            return realm, client, f"clients/{client.id}"
        scope = self.client_scope(realm, scope_id or "")
        return realm, scope, f"client-scopes/{scope.id}"

    def list_mappers(
        self,
        caller: Caller,
        realm_name: str,
        client_uuid: str | None = None,
        scope_id: str | None = None,
    ) -> Response:
        _, owner, _ = self._mapper_owner(caller, realm_name, client_uuid, scope_id, False)
        return json_response([m.to_rep() for m in owner.mappers.values()])

    def create_mapper(
        self,
        caller: Caller,
        request: Request,
        base_url: str,
        realm_name: str,
        client_uuid: str | None = None,
        scope_id: str | None = None,
    ) -> Response:
        realm, owner, path = self._mapper_owner(caller, realm_name, client_uuid, scope_id, True)
        rep = self.body(request, reps.PROTOCOL_MAPPER_FIELDS)
        mappers.check_supported(rep.get("protocolMapper", ""))
        mapper = realm.add_mapper(owner, rep)
        return created(f"{base_url}/admin/realms/{realm.name}/{path}/protocol-mappers/models/{mapper.id}")

    def get_mapper(
        self,
        caller: Caller,
        realm_name: str,
        mapper_id: str,
        client_uuid: str | None = None,
        scope_id: str | None = None,
    ) -> Response:
        _, owner, _ = self._mapper_owner(caller, realm_name, client_uuid, scope_id, False)
        mapper = owner.mappers.get(mapper_id)
        if mapper is None:
            raise not_found("Model not found")
        return json_response(mapper.to_rep())

    def update_mapper(
        self,
        caller: Caller,
        request: Request,
        realm_name: str,
        mapper_id: str,
        client_uuid: str | None = None,
        scope_id: str | None = None,
    ) -> Response:
        _, owner, _ = self._mapper_owner(caller, realm_name, client_uuid, scope_id, True)
        mapper = owner.mappers.get(mapper_id)
        if mapper is None:
            raise not_found("Model not found")
        rep = self.body(request, reps.PROTOCOL_MAPPER_FIELDS)
        if "config" in rep and rep["config"] is not None:
            mapper.config = {k: str(v) for k, v in rep["config"].items()}
        if rep.get("name"):
            mapper.name = rep["name"]
        return no_content()

    def delete_mapper(
        self,
        caller: Caller,
        realm_name: str,
        mapper_id: str,
        client_uuid: str | None = None,
        scope_id: str | None = None,
    ) -> Response:
        _, owner, _ = self._mapper_owner(caller, realm_name, client_uuid, scope_id, True)
        if owner.mappers.pop(mapper_id, None) is None:
            raise not_found("Model not found")
        return no_content()

    # -- client scopes ------------------------------------------------------------

    @staticmethod
    def client_scope(realm: Realm, scope_id: str) -> ClientScope:
        scope = realm.client_scopes.get(scope_id)
        if scope is None:
            raise not_found("Could not find client scope")
        return scope

    def list_client_scopes(self, caller: Caller, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "view-clients", "query-clients")
        scopes = sorted(realm.client_scopes.values(), key=lambda c: c.name)
        return json_response([c.to_rep() for c in scopes])

    def create_client_scope(self, caller: Caller, request: Request, base_url: str, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "manage-clients")
        rep = self.body(request, reps.CLIENT_SCOPE_FIELDS)
        for mapper in rep.get("protocolMappers") or []:
            reps.check_object(mapper, reps.PROTOCOL_MAPPER_FIELDS)
            mappers.check_supported(mapper.get("protocolMapper", ""))
        if not rep.get("name"):
            raise bad_request("Client scope name cannot be empty")
        scope = realm.add_client_scope(rep)
        return created(f"{base_url}/admin/realms/{realm.name}/client-scopes/{scope.id}")

    def get_client_scope(self, caller: Caller, realm_name: str, scope_id: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "view-clients")
        return json_response(self.client_scope(realm, scope_id).to_rep())

    def update_client_scope(self, caller: Caller, request: Request, realm_name: str, scope_id: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "manage-clients")
        scope = self.client_scope(realm, scope_id)
        realm.update_client_scope(scope, self.body(request, reps.CLIENT_SCOPE_FIELDS))
        return no_content()

    def delete_client_scope(self, caller: Caller, realm_name: str, scope_id: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "manage-clients")
        realm.delete_client_scope(self.client_scope(realm, scope_id))
        return no_content()

    def _scope_lists(
        self, caller: Caller, realm_name: str, client_uuid: str | None, manage: bool
    ) -> tuple[Realm, list[str], list[str]]:
        """(realm, default ids, optional ids) of a client, or of the realm's defaults."""
        realm = self.realm(realm_name)
        if client_uuid is None:
            self.require(caller, realm, "manage-realm" if manage else "view-realm")
            return realm, realm.default_default_scopes, realm.default_optional_scopes
        self.require(caller, realm, "manage-clients" if manage else "view-clients")
        client = realm.client_or_404(client_uuid)
        return realm, client.default_scopes, client.optional_scopes

    def list_assigned_scopes(
        self,
        caller: Caller,
        realm_name: str,
        client_uuid: str | None = None,
        optional: bool = False,
    ) -> Response:
        """Default or optional client scopes of a client (or the realm's defaults)."""
        realm, default, opt = self._scope_lists(caller, realm_name, client_uuid, False)
        ids = opt if optional else default
        return json_response([{"id": i, "name": realm.client_scopes[i].name} for i in ids])

    def change_assigned_scope(
        self,
        caller: Caller,
        request: Request,
        realm_name: str,
        scope_id: str,
        client_uuid: str | None = None,
        optional: bool = False,
    ) -> Response:
        """PUT assigns a client scope as default/optional (moving it from the other
        list), DELETE unassigns it."""
        realm, default, opt = self._scope_lists(caller, realm_name, client_uuid, True)
        if scope_id not in realm.client_scopes:
            raise not_found("Client scope not found")
        target, other = (opt, default) if optional else (default, opt)
        if request.method == "PUT":
            if scope_id in other:
                other.remove(scope_id)
            if scope_id not in target:
                target.append(scope_id)
        elif scope_id in target:
            target.remove(scope_id)
        return no_content()

    # -- roles (realm roles and client roles) ----------------------------------

    def _container(
        self, caller: Caller, realm_name: str, client_uuid: str | None, manage: bool
    ) -> tuple[Realm, Client | None]:
        realm = self.realm(realm_name)
        if client_uuid is None:
            self.require(caller, realm, *(("manage-realm",) if manage else ()))
            return realm, None
        self.require(caller, realm, "manage-clients" if manage else "view-clients")
        return realm, realm.client_or_404(client_uuid)

    def list_roles(self, caller: Caller, request: Request, realm_name: str, client_uuid: str | None = None) -> Response:
        realm, client = self._container(caller, realm_name, client_uuid, manage=False)
        roles = realm.client_roles(client) if client else realm.realm_roles()
        search = request.args.get("search")
        if search:
            roles = [r for r in roles if search.lower() in r.name.lower()]
        brief = _flag(request, "briefRepresentation", True)
        return json_response([r.to_rep(brief) for r in _page(roles, request, None)])

    def create_role(
        self,
        caller: Caller,
        request: Request,
        base_url: str,
        realm_name: str,
        client_uuid: str | None = None,
    ) -> Response:
        realm, client = self._container(caller, realm_name, client_uuid, manage=True)
        rep = self.body(request, reps.ROLE_FIELDS)
        if not rep.get("name"):
            raise bad_request("Role name cannot be empty")
        role = realm.add_role(
            rep["name"],
            client=client,
            description=rep.get("description"),
            attributes=rep.get("attributes"),
        )
        prefix = f"clients/{client.id}/roles" if client else "roles"
        return created(f"{base_url}/admin/realms/{realm.name}/{prefix}/{role.name}")

    def get_role(self, caller: Caller, realm_name: str, role_name: str, client_uuid: str | None = None) -> Response:
        if client_uuid is None:  # a realm role: Keycloak's requireView on the realm
            realm = self.realm(realm_name)
            self.require(caller, realm, "view-realm")
            return json_response(self.role_by_name(realm, role_name, None).to_rep(brief=False))
        realm, client = self._container(caller, realm_name, client_uuid, manage=False)
        return json_response(self.role_by_name(realm, role_name, client).to_rep(brief=False))

    def update_role(
        self,
        caller: Caller,
        request: Request,
        realm_name: str,
        role_name: str,
        client_uuid: str | None = None,
    ) -> Response:
        realm, client = self._container(caller, realm_name, client_uuid, manage=True)
        self._update_role(realm, self.role_by_name(realm, role_name, client), self.body(request, reps.ROLE_FIELDS))
        return no_content()

    @staticmethod
    def _update_role(realm: Realm, role: Role, rep: dict[str, Any]) -> None:
        new_name = rep.get("name")
        if new_name and new_name != role.name:
            owner = realm.clients.get(role.client_uuid or "")
            if realm.find_role(new_name, owner) is not None:
                raise KeycloakHTTPError(409, {"errorMessage": f"Role with name {new_name} already exists"})
            role.name = new_name
        if "description" in rep:
            role.description = rep["description"]
        if rep.get("attributes") is not None:
            role.attributes = {k: list(v) for k, v in rep["attributes"].items()}

    def delete_role(self, caller: Caller, realm_name: str, role_name: str, client_uuid: str | None = None) -> Response:
        realm, client = self._container(caller, realm_name, client_uuid, manage=True)
        role = self.role_by_name(realm, role_name, client)
        if role is realm.default_role:
            raise bad_request("You cannot delete a default realm role")
        realm.delete_role(role)
        return no_content()

    def role_users(
        self,
        caller: Caller,
        request: Request,
        realm_name: str,
        role_name: str,
        client_uuid: str | None = None,
    ) -> Response:
        realm, client = self._container(caller, realm_name, client_uuid, manage=False)
        self.require(caller, realm, "view-users", "query-users")
        role = self.role_by_name(realm, role_name, client)
        users = sorted((u for u in realm.users.values() if role.id in u.role_ids), key=lambda u: u.username)
        brief = _flag(request, "briefRepresentation", True)
        return json_response([realm.user_rep(u, brief) for u in _page(users, request, 100)])

    # -- composites (by name and by id) ----------------------------------------

    def _role_for_composites(
        self,
        caller: Caller,
        realm_name: str,
        role_name: str | None,
        role_id: str | None,
        client_uuid: str | None,
        manage: bool,
    ) -> tuple[Realm, Role]:
        realm, client = self._container(caller, realm_name, client_uuid, manage=manage)
        if role_id is not None:
            return realm, self.role_by_id(realm, role_id)
        assert role_name is not None
        return realm, self.role_by_name(realm, role_name, client)

    def get_composites(
        self,
        caller: Caller,
        request: Request,
        realm_name: str,
        role_name: str | None = None,
        role_id: str | None = None,
        client_uuid: str | None = None,
        only: str | None = None,
    ) -> Response:
        """Composites of a role; ``only`` is "realm" or a client uuid to filter."""
        realm, role = self._role_for_composites(caller, realm_name, role_name, role_id, client_uuid, manage=False)
        members = [realm.roles[i] for i in role.composites if i in realm.roles]
        if only == "realm":
            members = [r for r in members if r.client_uuid is None]
        elif only is not None:
            realm.client_or_404(only)
            members = [r for r in members if r.client_uuid == only]
        members.sort(key=lambda r: r.name)
        brief = _flag(request, "briefRepresentation", True)
        return json_response([r.to_rep(brief) for r in _page(members, request, None)])

    def change_composites(
        self,
        caller: Caller,
        request: Request,
        realm_name: str,
        role_name: str | None = None,
        role_id: str | None = None,
        client_uuid: str | None = None,
    ) -> Response:
        """POST adds, DELETE removes the listed roles (looked up by id)."""
        realm, role = self._role_for_composites(caller, realm_name, role_name, role_id, client_uuid, manage=True)
        items = self.body_list(request, reps.ROLE_FIELDS)
        found = []
        for item in items:
            member = realm.roles.get(item.get("id") or "")
            if member is None:
                raise not_found("Could not find composite role")
            found.append(member)
        for member in found:
            if request.method == "POST":
                role.composites.add(member.id)
            else:
                role.composites.discard(member.id)
        return no_content()

    def get_role_by_id(self, caller: Caller, realm_name: str, role_id: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm)
        return json_response(self.role_by_id(realm, role_id).to_rep(brief=False))

    def update_role_by_id(self, caller: Caller, request: Request, realm_name: str, role_id: str) -> Response:
        realm = self.realm(realm_name)
        role = self.role_by_id(realm, role_id)
        self.require(caller, realm, "manage-clients" if role.client_uuid else "manage-realm")
        self._update_role(realm, role, self.body(request, reps.ROLE_FIELDS))
        return no_content()

    def delete_role_by_id(self, caller: Caller, realm_name: str, role_id: str) -> Response:
        realm = self.realm(realm_name)
        role = self.role_by_id(realm, role_id)
        self.require(caller, realm, "manage-clients" if role.client_uuid else "manage-realm")
        if role is realm.default_role:
            raise bad_request("You cannot delete a default realm role")
        realm.delete_role(role)
        return no_content()

    # -- users ------------------------------------------------------------------

    @staticmethod
    def _matches(user: User, request: Request) -> bool:
        args = request.args
        exact = _flag(request, "exact", False)

        def match(value: str | None, wanted: str) -> bool:
            if value is None:
                return False
            return value.lower() == wanted.lower() if exact else wanted.lower() in value.lower()

        search = args.get("search")
        if search:
            term = search.strip()
            if term.startswith('"') and term.endswith('"') and len(term) > 1:
                term = term[1:-1]
                if not any(
                    (v or "").lower() == term.lower()
                    for v in (user.username, user.email, user.first_name, user.last_name)
                ):
                    return False
            elif term not in ("*", ""):
                term = term.strip("*")
                if not any(
                    term.lower() in (v or "").lower()
                    for v in (user.username, user.email, user.first_name, user.last_name)
                ):
                    return False
        for param, value in (
            ("username", user.username),
            ("email", user.email),
            ("firstName", user.first_name),
            ("lastName", user.last_name),
        ):
            wanted = args.get(param)
            if wanted is not None and not match(value, wanted):
                return False
        if args.get("enabled") is not None and user.enabled != _flag(request, "enabled", True):
            return False
        if args.get("emailVerified") is not None and user.email_verified != _flag(request, "emailVerified", True):
            return False
        query = args.get("q")
        if query:
            for pair in query.split(" "):
                key, _, value = pair.partition(":")
                if value not in user.attributes.get(key, []):
                    return False
        return True

    def _users(self, realm: Realm, request: Request) -> list[User]:
        users = [u for u in realm.users.values() if self._matches(u, request)]
        return sorted(users, key=lambda u: u.username)

    def list_users(self, caller: Caller, request: Request, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "view-users", "query-users")
        brief = _flag(request, "briefRepresentation", False)
        users = _page(self._users(realm, request), request, 100)
        return json_response([realm.user_rep(u, brief) for u in users])

    def count_users(self, caller: Caller, request: Request, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "view-users", "query-users")
        return json_response(len(self._users(realm, request)))

    def create_user(self, caller: Caller, request: Request, base_url: str, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "manage-users")
        rep = self.body(request, reps.USER_FIELDS)
        for credential in rep.get("credentials") or []:
            reps.check_object(credential, reps.CREDENTIAL_FIELDS)
        if not rep.get("username"):
            raise bad_request("User name is missing")
        user = realm.add_user(rep)
        return created(f"{base_url}/admin/realms/{realm.name}/users/{user.id}")

    def user(self, caller: Caller, realm_name: str, user_id: str, *perms: str) -> tuple[Realm, User]:
        realm = self.realm(realm_name)
        self.require(caller, realm, *(perms or ("view-users",)))
        return realm, realm.user_or_404(user_id)

    def get_user(self, caller: Caller, realm_name: str, user_id: str) -> Response:
        realm, user = self.user(caller, realm_name, user_id)
        return json_response(realm.user_rep(user))

    def update_user(self, caller: Caller, request: Request, realm_name: str, user_id: str) -> Response:
        realm, user = self.user(caller, realm_name, user_id, "manage-users")
        rep = self.body(request, reps.USER_FIELDS)
        for credential in rep.get("credentials") or []:
            reps.check_object(credential, reps.CREDENTIAL_FIELDS)
        new_name = rep.get("username")
        if new_name and new_name.lower() != user.username:
            if realm.user_by_username(new_name) is not None:
                raise KeycloakHTTPError(409, {"errorMessage": "User exists with same username"})
            user.username = new_name.lower()
        realm.apply_user(user, rep)
        return no_content()

    def delete_user(self, caller: Caller, realm_name: str, user_id: str) -> Response:
        realm, user = self.user(caller, realm_name, user_id, "manage-users")
        realm.delete_user(user)
        return no_content()

    def reset_password(self, caller: Caller, request: Request, realm_name: str, user_id: str) -> Response:
        realm, user = self.user(caller, realm_name, user_id, "manage-users")
        credential = self.body(request, reps.CREDENTIAL_FIELDS)
        if not credential.get("value"):
            raise bad_request("Password cannot be empty")
        realm.set_password(user, credential["value"])
        if credential.get("temporary"):
            user.required_actions = [*user.required_actions, "UPDATE_PASSWORD"]
        return no_content()

    def user_credentials(self, caller: Caller, realm_name: str, user_id: str) -> Response:
        _, user = self.user(caller, realm_name, user_id)
        if user.password is None:
            return json_response([])
        return json_response([{"id": user.password_id, "type": "password", "createdDate": user.password_created}])

    def delete_credential(self, caller: Caller, realm_name: str, user_id: str, credential_id: str) -> Response:
        _, user = self.user(caller, realm_name, user_id, "manage-users")
        if user.password is None or credential_id != user.password_id:
            raise not_found("Credential not found")
        user.password = None
        return no_content()

    def user_consents(self, caller: Caller, realm_name: str, user_id: str) -> Response:
        """Consents: only granted through browser flows, which this server lacks."""
        self.user(caller, realm_name, user_id)
        return json_response([])

    def user_sessions(self, caller: Caller, realm_name: str, user_id: str) -> Response:
        realm, user = self.user(caller, realm_name, user_id)
        sessions = [s for s in realm.sessions.values() if s.user_id == user.id and s.active]
        return json_response(
            [
                {
                    "id": s.id,
                    "username": user.username,
                    "userId": user.id,
                    "ipAddress": "127.0.0.1",
                    "start": s.started * 1000,
                    "lastAccess": s.last_refresh * 1000,
                    "rememberMe": False,
                    "clients": {s.client_id: realm.clients[s.client_id].client_id}
                    if s.client_id in realm.clients
                    else {},
                }
                for s in sessions
            ]
        )

    def user_logout(self, caller: Caller, realm_name: str, user_id: str) -> Response:
        realm, user = self.user(caller, realm_name, user_id, "manage-users")
        realm.logout_user(user)
        return no_content()

    # -- role mappings (users, groups) and scope mappings (clients, client scopes) --

    def _holder(
        self,
        caller: Caller,
        realm_name: str,
        manage: bool,
        user_id: str | None = None,
        group_id: str | None = None,
        scoped_client: str | None = None,
        scope_id: str | None = None,
    ) -> tuple[Realm, set[str], set[str]]:
        """The mapped role ids of the addressed user, group, client (scope mappings) or
        client scope (scope mappings), and the effective role ids they grant."""
        realm = self.realm(realm_name)
        if user_id is not None:
            self.require(caller, realm, "manage-users" if manage else "view-users")
            user = realm.user_or_404(user_id)
            return realm, user.role_ids, realm.effective_roles(user)
        if group_id is not None:
            self.require(
                caller,
                realm,
                "manage-users" if manage else "view-users",
                *(() if manage else ("query-groups",)),
            )
            group = realm.group_or_404(group_id)
            inherited = set(group.role_ids)
            parent = realm.groups.get(group.parent_id or "")
            while parent is not None:
                inherited |= parent.role_ids
                parent = realm.groups.get(parent.parent_id or "")
            return realm, group.role_ids, realm.expand(inherited)
        self.require(caller, realm, "manage-clients" if manage else "view-clients")
        if scoped_client is not None:
            mapped = realm.client_or_404(scoped_client).scope_role_ids
        else:
            mapped = self.client_scope(realm, scope_id or "").role_ids
        return realm, mapped, realm.expand(mapped)

    @staticmethod
    def _mapping_roles(roles: Iterable[Role], brief: bool = True) -> list[dict[str, Any]]:
        return [r.to_rep(brief) for r in sorted(roles, key=lambda r: r.name)]

    def all_role_mappings(self, caller: Caller, realm_name: str, **holder: str) -> Response:
        realm, mapped, _ = self._holder(caller, realm_name, False, **holder)
        direct = [realm.roles[i] for i in mapped if i in realm.roles]
        body: dict[str, Any] = {}
        realm_roles = [r for r in direct if r.client_uuid is None]
        if realm_roles:
            body["realmMappings"] = self._mapping_roles(realm_roles)
        by_client: dict[str, list[Role]] = {}
        for role in direct:
            if role.client_uuid is not None:
                by_client.setdefault(role.client_uuid, []).append(role)
        if by_client:
            body["clientMappings"] = {
                realm.clients[c].client_id: {
                    "id": c,
                    "client": realm.clients[c].client_id,
                    "mappings": self._mapping_roles(roles),
                }
                for c, roles in by_client.items()
            }
        return json_response(body)

    @staticmethod
    def _scope(realm: Realm, client_uuid: str | None) -> Callable[[Role], bool]:
        if client_uuid is None:
            return lambda r: r.client_uuid is None
        if client_uuid not in realm.clients:
            raise not_found("Client not found")
        return lambda r: r.client_uuid == client_uuid

    def role_mappings(
        self,
        caller: Caller,
        request: Request,
        realm_name: str,
        client_uuid: str | None = None,
        view: str = "direct",
        **holder: str,
    ) -> Response:
        """GET direct, ``available`` (not directly mapped) or ``composite`` (effective,
        groups and composites included) role or scope mappings."""
        realm, mapped, effective = self._holder(caller, realm_name, False, **holder)
        in_scope = self._scope(realm, client_uuid)
        if view == "direct":
            roles = [realm.roles[i] for i in mapped if i in realm.roles]
        elif view == "composite":
            roles = [realm.roles[i] for i in effective]
        else:
            roles = [r for r in realm.roles.values() if r.id not in mapped]
        brief = _flag(request, "briefRepresentation", True)
        return json_response(self._mapping_roles((r for r in roles if in_scope(r)), brief))

    def change_role_mappings(
        self,
        caller: Caller,
        request: Request,
        realm_name: str,
        client_uuid: str | None = None,
        **holder: str,
    ) -> Response:
        """POST adds, DELETE removes role (or scope) mappings (roles named and
        identified)."""
        realm, mapped, _ = self._holder(caller, realm_name, True, **holder)
        in_scope = self._scope(realm, client_uuid)
        raw = request.get_data()
        if request.method == "DELETE" and not raw.strip() and client_uuid is None:
            mapped.difference_update({i for i in mapped if in_scope(realm.roles[i])})
            return no_content()
        items = self.body_list(request, reps.ROLE_FIELDS)
        owner = realm.clients.get(client_uuid or "")
        roles = []
        for item in items:
            role = realm.find_role(item.get("name") or "", owner)
            if role is None or (item.get("id") and item["id"] != role.id):
                raise not_found("Role not found")
            roles.append(role)
        for role in roles:
            if "user_id" in holder or "group_id" in holder:
                self.require_map_role(caller, realm, role)
            if request.method == "POST":
                mapped.add(role.id)
            else:
                mapped.discard(role.id)
        return no_content()

    # -- groups ---------------------------------------------------------------------

    def list_groups(self, caller: Caller, request: Request, realm_name: str, group_id: str | None = None) -> Response:
        """Top-level groups, or a group's children, filtered by ``search``."""
        realm = self.realm(realm_name)
        self.require(caller, realm, "view-users", "query-groups")
        parent = realm.group_or_404(group_id) if group_id is not None else None
        groups = realm.children(parent)
        search = request.args.get("search")
        if search:
            exact = _flag(request, "exact", False)
            groups = [g for g in groups if (g.name == search if exact else search.lower() in g.name.lower())]
        brief = _flag(request, "briefRepresentation", True)
        return json_response([realm.group_rep(g, brief) for g in _page(groups, request, None)])

    def count_groups(self, caller: Caller, request: Request, realm_name: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "view-users", "query-groups")
        groups = [g for g in realm.groups.values() if not _flag(request, "top", False) or g.parent_id is None]
        search = request.args.get("search")
        if search:
            groups = [g for g in groups if search.lower() in g.name.lower()]
        return json_response({"count": len(groups)})

    def create_group(
        self,
        caller: Caller,
        request: Request,
        base_url: str,
        realm_name: str,
        group_id: str | None = None,
    ) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "manage-users")
        parent = realm.group_or_404(group_id) if group_id is not None else None
        rep = self.body(request, reps.GROUP_FIELDS)
        if not rep.get("name"):
            raise bad_request("Group name is missing")
        group = realm.add_group(rep, parent)
        return created(f"{base_url}/admin/realms/{realm.name}/groups/{group.id}")

    def get_group(self, caller: Caller, realm_name: str, group_id: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "view-users", "query-groups")
        return json_response(realm.group_rep(realm.group_or_404(group_id), brief=False))

    def update_group(self, caller: Caller, request: Request, realm_name: str, group_id: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "manage-users")
        group = realm.group_or_404(group_id)
        rep = self.body(request, reps.GROUP_FIELDS)
        name = rep.get("name")
        if (
            name
            and name != group.name
            and any(g.name == name and g.parent_id == group.parent_id for g in realm.groups.values())
        ):
            raise KeycloakHTTPError(409, {"errorMessage": f"Sibling group named '{name}' already exists."})
        realm.update_group(group, rep)
        return no_content()

    def delete_group(self, caller: Caller, realm_name: str, group_id: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "manage-users")
        realm.delete_group(realm.group_or_404(group_id))
        return no_content()

    def group_members(self, caller: Caller, request: Request, realm_name: str, group_id: str) -> Response:
        realm = self.realm(realm_name)
        self.require(caller, realm, "view-users", "query-users")
        group = realm.group_or_404(group_id)
        members = sorted((u for u in realm.users.values() if group.id in u.group_ids), key=lambda u: u.username)
        brief = _flag(request, "briefRepresentation", False)
        return json_response([realm.user_rep(u, brief) for u in _page(members, request, 100)])

    def user_groups(self, caller: Caller, request: Request, realm_name: str, user_id: str) -> Response:
        realm, user = self.user(caller, realm_name, user_id)
        groups = sorted(
            (realm.groups[g] for g in user.group_ids if g in realm.groups),
            key=lambda g: realm.group_path(g),
        )
        search = request.args.get("search")
        if search:
            groups = [g for g in groups if search.lower() in g.name.lower()]
        brief = _flag(request, "briefRepresentation", True)
        return json_response([realm.group_rep(g, brief) for g in _page(groups, request, 100)])

    def count_user_groups(self, caller: Caller, request: Request, realm_name: str, user_id: str) -> Response:
        realm, user = self.user(caller, realm_name, user_id)
        return json_response({"count": len([g for g in user.group_ids if g in realm.groups])})

    def change_membership(
        self, caller: Caller, request: Request, realm_name: str, user_id: str, group_id: str
    ) -> Response:
        """PUT joins, DELETE leaves a group."""
        realm, user = self.user(caller, realm_name, user_id, "manage-users")
        group = realm.group_or_404(group_id)
        if request.method == "PUT":
            user.group_ids.add(group.id)
        else:
            user.group_ids.discard(group.id)
        return no_content()

    def role_groups(
        self,
        caller: Caller,
        request: Request,
        realm_name: str,
        role_name: str,
        client_uuid: str | None = None,
    ) -> Response:
        """Groups the role is directly mapped to."""
        realm, client = self._container(caller, realm_name, client_uuid, manage=False)
        role = self.role_by_name(realm, role_name, client)
        groups = sorted((g for g in realm.groups.values() if role.id in g.role_ids), key=lambda g: g.name)
        brief = _flag(request, "briefRepresentation", True)
        return json_response([realm.group_rep(g, brief) for g in _page(groups, request, 100)])
