"""The server's realms, the master admin and who may administer which realm.

Keycloak's admin permission model: a token from realm R administers R through the
roles of R's ``realm-management`` client; a token from ``master`` administers any
realm R through the roles of master's ``<R>-realm`` client, and master's ``admin``
realm role is a composite of all of them plus ``create-realm``. ``manage-X``
implies ``view-X``.
"""

from __future__ import annotations

import threading
from typing import Any

from . import realm_import
from .errors import bad_request, conflict, forbidden, not_found
from .realm import MASTER, Realm, User

ADMIN_ROLE = "admin"
CREATE_REALM = "create-realm"


class Store:
    """All realms, guarded by one re-entrant lock."""

    def __init__(self, admin_user: str, admin_password: str) -> None:
        self.lock = threading.RLock()
        self.realms: dict[str, Realm] = {}
        master = Realm(MASTER, {"enabled": True, "accessTokenLifespan": 60}, management_client="master-realm")
        self.realms[MASTER] = master
        admin_role = master.add_role(ADMIN_ROLE, description="${role_admin}")
        create_realm = master.add_role(CREATE_REALM, description="${role_create-realm}")
        admin_role.composites.add(create_realm.id)
        admin_role.composites |= {r.id for r in master.client_roles(master.management_client)}
        admin = master.add_user(
            {
                "username": admin_user,
                "enabled": True,
                "credentials": [{"type": "password", "value": admin_password}],
            }
        )
        admin.role_ids.add(admin_role.id)

    @property
    def master(self) -> Realm:
        return self.realms[MASTER]

    def realm_or_404(self, name: str) -> Realm:
        realm = self.realms.get(name)
        if realm is None:
            raise not_found("Realm not found.")
        return realm

    def create_realm(self, rep: dict[str, Any]) -> Realm:
        """Create (import) a realm and its ``<name>-realm`` admin client in master."""
        name = rep.get("realm")
        if not name:
            raise bad_request("Realm name cannot be empty")
        if name in self.realms:
            raise conflict(f"Realm {name} already exists")
        realm_import.validate(rep)
        realm = Realm(name, rep)
        realm_import.import_contents(realm, rep)
        master = self.master
        admin_client = master.add_client(
            {
                "clientId": f"{name}-realm",
                "name": f"{name} Realm",
                "bearerOnly": True,
                "directAccessGrantsEnabled": False,
            }
        )
        admin_role = master.realm_role(ADMIN_ROLE)
        assert admin_role is not None
        admin_role.composites |= {r.id for r in master.add_management_roles(admin_client, realm_admin=False)}
        self.realms[name] = realm
        return realm

    def delete_realm(self, name: str) -> None:
        realm = self.realm_or_404(name)
        if realm.name == MASTER:
            raise forbidden()
        admin_client = self.master.client_by_client_id(f"{name}-realm")
        if admin_client is not None:
            self.master.delete_client(admin_client)
        del self.realms[name]

    def admin_roles(self, token_realm: Realm, user: User, target: str) -> set[str]:
        """Names of the admin roles ``user`` holds over realm ``target``."""
        if token_realm.name == target:
            client = token_realm.management_client
        elif token_realm.name == MASTER:
            found = token_realm.client_by_client_id(f"{target}-realm")
            if found is None:
                return set()
            client = found
        else:
            return set()
        roles = token_realm.effective_roles(user)
        return {token_realm.roles[r].name for r in roles if token_realm.roles[r].client_uuid == client.id}

    def can_create_realm(self, token_realm: Realm, user: User) -> bool:
        if token_realm.name != MASTER:
            return False
        names = {
            token_realm.roles[r].name
            for r in token_realm.effective_roles(user)
            if token_realm.roles[r].client_uuid is None
        }
        return CREATE_REALM in names or ADMIN_ROLE in names
