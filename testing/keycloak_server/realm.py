"""In-memory Keycloak state: realms with their roles, clients, users and sessions.

Objects keep what Keycloak stores and render Keycloak's representations. Every
mutation happens under the server-wide lock held by the request dispatcher.
"""

from __future__ import annotations

import copy
import secrets
import string
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .errors import conflict, not_found
from .tokens import RealmKeys

MASTER = "master"
REALM_MANAGEMENT = "realm-management"

# Keycloak's realm-management client roles and their composites.
MANAGEMENT_ROLES: dict[str, tuple[str, ...]] = {
    "create-client": (),
    "impersonation": (),
    "manage-authorization": (),
    "manage-clients": (),
    "manage-events": (),
    "manage-identity-providers": (),
    "manage-realm": (),
    "manage-users": (),
    "query-clients": (),
    "query-groups": (),
    "query-realms": (),
    "query-users": (),
    "view-authorization": (),
    "view-clients": ("query-clients",),
    "view-events": (),
    "view-identity-providers": (),
    "view-realm": (),
    "view-users": ("query-users", "query-groups"),
}

REALM_DEFAULTS: dict[str, Any] = {
    "notBefore": 0,
    "defaultSignatureAlgorithm": "RS256",
    "revokeRefreshToken": False,
    "refreshTokenMaxReuse": 0,
    "accessTokenLifespan": 300,
    "accessTokenLifespanForImplicitFlow": 900,
    "ssoSessionIdleTimeout": 1800,
    "ssoSessionMaxLifespan": 36000,
    "ssoSessionIdleTimeoutRememberMe": 0,
    "ssoSessionMaxLifespanRememberMe": 0,
    "offlineSessionIdleTimeout": 2592000,
    "offlineSessionMaxLifespanEnabled": False,
    "offlineSessionMaxLifespan": 5184000,
    "clientSessionIdleTimeout": 0,
    "clientSessionMaxLifespan": 0,
    "clientOfflineSessionIdleTimeout": 0,
    "clientOfflineSessionMaxLifespan": 0,
    "accessCodeLifespan": 60,
    "accessCodeLifespanUserAction": 300,
    "accessCodeLifespanLogin": 1800,
    "actionTokenGeneratedByAdminLifespan": 43200,
    "actionTokenGeneratedByUserLifespan": 300,
    "oauth2DeviceCodeLifespan": 600,
    "oauth2DevicePollingInterval": 5,
    "enabled": False,
    "sslRequired": "external",
    "registrationAllowed": False,
    "registrationEmailAsUsername": False,
    "rememberMe": False,
    "verifyEmail": False,
    "loginWithEmailAllowed": True,
    "duplicateEmailsAllowed": False,
    "resetPasswordAllowed": False,
    "editUsernameAllowed": False,
    "bruteForceProtected": False,
    "permanentLockout": False,
    "maxTemporaryLockouts": 0,
    "bruteForceStrategy": "MULTIPLE",
    "maxFailureWaitSeconds": 900,
    "minimumQuickLoginWaitSeconds": 60,
    "waitIncrementSeconds": 60,
    "quickLoginCheckMilliSeconds": 1000,
    "maxDeltaTimeSeconds": 43200,
    "failureFactor": 30,
    "requiredCredentials": ["password"],
    "otpPolicyType": "totp",
    "otpPolicyAlgorithm": "HmacSHA1",
    "otpPolicyInitialCounter": 0,
    "otpPolicyDigits": 6,
    "otpPolicyLookAheadWindow": 1,
    "otpPolicyPeriod": 30,
    "otpPolicyCodeReusable": False,
    "browserSecurityHeaders": {},
    "smtpServer": {},
    "eventsEnabled": False,
    "eventsListeners": ["jboss-logging"],
    "enabledEventTypes": [],
    "adminEventsEnabled": False,
    "adminEventsDetailsEnabled": False,
    "internationalizationEnabled": False,
    "supportedLocales": [],
    "browserFlow": "browser",
    "registrationFlow": "registration",
    "directGrantFlow": "direct grant",
    "resetCredentialsFlow": "reset credentials",
    "clientAuthenticationFlow": "clients",
    "dockerAuthenticationFlow": "docker auth",
    "firstBrokerLoginFlow": "first broker login",
    "attributes": {},
    "userManagedAccessAllowed": False,
    "organizationsEnabled": False,
    "verifiableCredentialsEnabled": False,
    "adminPermissionsEnabled": False,
}

CLIENT_DEFAULTS: dict[str, Any] = {
    "surrogateAuthRequired": False,
    "enabled": True,
    "alwaysDisplayInConsole": False,
    "clientAuthenticatorType": "client-secret",
    "redirectUris": [],
    "webOrigins": [],
    "notBefore": 0,
    "bearerOnly": False,
    "consentRequired": False,
    "standardFlowEnabled": True,
    "implicitFlowEnabled": False,
    "directAccessGrantsEnabled": True,
    "serviceAccountsEnabled": False,
    "publicClient": False,
    "frontchannelLogout": True,
    "protocol": "openid-connect",
    "attributes": {},
    "authenticationFlowBindingOverrides": {},
    "fullScopeAllowed": True,
    "nodeReRegistrationTimeout": -1,
}

# RealmRepresentation fields that are realm contents or computed, not settings.
NOT_SETTINGS = frozenset(
    """
    id realm defaultRole defaultRoles roles groups defaultGroups clients users
    federatedUsers clientScopes defaultDefaultClientScopes defaultOptionalClientScopes
    scopeMappings clientScopeMappings identityProviders identityProviderMappers
    protocolMappers components authenticationFlows authenticatorConfig requiredActions
    organizations keycloakVersion applications oauthClients clientTemplates
    applicationScopeMappings socialProviders userFederationProviders userFederationMappers
    privateKey publicKey certificate codeSecret
""".split()
)

# ClientRepresentation fields kept outside ``Client.rep``.
CLIENT_MANAGED = frozenset(
    {
        "id",
        "clientId",
        "secret",
        "protocolMappers",
        "access",
        "defaultClientScopes",
        "optionalClientScopes",
    }
)

# Keycloak 26's built-in client scopes: name -> (protocol, include.in.token.scope).
BUILTIN_SCOPES: dict[str, tuple[str, bool]] = {
    "acr": ("openid-connect", False),
    "address": ("openid-connect", True),
    "basic": ("openid-connect", False),
    "email": ("openid-connect", True),
    "microprofile-jwt": ("openid-connect", True),
    "offline_access": ("openid-connect", True),
    "organization": ("openid-connect", True),
    "phone": ("openid-connect", True),
    "profile": ("openid-connect", True),
    "role_list": ("saml", True),
    "roles": ("openid-connect", False),
    "saml_organization": ("saml", True),
    "service_account": ("openid-connect", False),
    "web-origins": ("openid-connect", False),
}
# A realm's default client scopes ("default-default") and optional ones, by name.
DEFAULT_DEFAULT_SCOPES = (
    "acr",
    "basic",
    "email",
    "profile",
    "roles",
    "web-origins",
    "role_list",
    "saml_organization",
)
DEFAULT_OPTIONAL_SCOPES = ("address", "microprofile-jwt", "offline_access", "organization", "phone")
# The scope a client's service account gets when service accounts are enabled.
SERVICE_ACCOUNT_SCOPE = "service_account"

# Clients every new realm has (clientId -> overrides of CLIENT_DEFAULTS).
BUILTIN_CLIENTS: dict[str, dict[str, Any]] = {
    "account": {
        "name": "${client_account}",
        "publicClient": True,
        "directAccessGrantsEnabled": False,
    },
    "account-console": {
        "name": "${client_account-console}",
        "publicClient": True,
        "directAccessGrantsEnabled": False,
    },
    "admin-cli": {
        "name": "${client_admin-cli}",
        "publicClient": True,
        "standardFlowEnabled": False,
    },
    "broker": {"name": "${client_broker}", "bearerOnly": True, "directAccessGrantsEnabled": False},
    REALM_MANAGEMENT: {
        "name": "${client_realm-management}",
        "bearerOnly": True,
        "directAccessGrantsEnabled": False,
    },
    "security-admin-console": {
        "name": "${client_security-admin-console}",
        "publicClient": True,
        "directAccessGrantsEnabled": False,
    },
}

DEFAULT_USER_PROFILE: dict[str, Any] = {
    "attributes": [
        {
            "name": "username",
            "displayName": "${username}",
            "validations": {
                "length": {"min": 3, "max": 255},
                "username-prohibited-characters": {},
                "up-username-not-idn-homograph": {},
            },
            "permissions": {"view": ["admin", "user"], "edit": ["admin", "user"]},
            "multivalued": False,
        },
        {
            "name": "email",
            "displayName": "${email}",
            "validations": {"email": {}, "length": {"max": 255}},
            "permissions": {"view": ["admin", "user"], "edit": ["admin", "user"]},
            "multivalued": False,
        },
        {
            "name": "firstName",
            "displayName": "${firstName}",
            "validations": {"length": {"max": 255}, "person-name-prohibited-characters": {}},
            "permissions": {"view": ["admin", "user"], "edit": ["admin", "user"]},
            "multivalued": False,
        },
        {
            "name": "lastName",
            "displayName": "${lastName}",
            "validations": {"length": {"max": 255}, "person-name-prohibited-characters": {}},
            "permissions": {"view": ["admin", "user"], "edit": ["admin", "user"]},
            "multivalued": False,
        },
    ],
    "groups": [
        {
            "name": "user-metadata",
            "displayHeader": "User metadata",
            "displayDescription": "Attributes, which refer to user metadata",
        }
    ],
}


def new_id() -> str:
    """A Keycloak-style UUID identifier."""
    return str(uuid.uuid4())


def new_secret() -> str:
    """A client secret like Keycloak's (32 alphanumeric characters)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


@dataclass
class Role:
    """A realm role (``client_uuid`` None) or a client role."""

    id: str
    name: str
    container_id: str
    client_uuid: str | None = None
    description: str | None = None
    composites: set[str] = field(default_factory=set)
    attributes: dict[str, list[str]] = field(default_factory=dict)

    def to_rep(self, brief: bool = True) -> dict[str, Any]:
        rep: dict[str, Any] = {"id": self.id, "name": self.name}
        if self.description is not None:
            rep["description"] = self.description
        rep.update(
            composite=bool(self.composites),
            clientRole=self.client_uuid is not None,
            containerId=self.container_id,
        )
        if not brief:
            rep["attributes"] = copy.deepcopy(self.attributes)
        return rep


@dataclass
class ProtocolMapper:
    """A protocol mapper model on a client."""

    id: str
    name: str
    protocol: str
    protocol_mapper: str
    config: dict[str, str]

    def to_rep(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "protocol": self.protocol,
            "protocolMapper": self.protocol_mapper,
            "consentRequired": False,
            "config": dict(self.config),
        }


@dataclass
class Client:
    """A client: its stored representation fields, secret, roles and mappers."""

    id: str
    client_id: str
    rep: dict[str, Any]
    secret: str | None = None
    service_account_user: str | None = None
    mappers: dict[str, ProtocolMapper] = field(default_factory=dict)
    default_scopes: list[str] = field(default_factory=list)
    optional_scopes: list[str] = field(default_factory=list)
    scope_role_ids: set[str] = field(default_factory=set)

    @property
    def enabled(self) -> bool:
        return bool(self.rep.get("enabled", True))

    @property
    def public(self) -> bool:
        return bool(self.rep.get("publicClient"))

    @property
    def attributes(self) -> dict[str, str]:
        return self.rep.setdefault("attributes", {})

    def to_rep(self, scope_names: dict[str, str]) -> dict[str, Any]:
        """The ClientRepresentation; ``scope_names`` maps client scope ids to names."""
        rep = {"id": self.id, "clientId": self.client_id}
        rep.update(copy.deepcopy(self.rep))
        if self.secret is not None and not self.public and not self.rep.get("bearerOnly"):
            rep["secret"] = self.secret
        if self.mappers:
            rep["protocolMappers"] = [m.to_rep() for m in self.mappers.values()]
        rep["defaultClientScopes"] = [scope_names[i] for i in self.default_scopes]
        rep["optionalClientScopes"] = [scope_names[i] for i in self.optional_scopes]
        rep["access"] = {"view": True, "configure": True, "manage": True}
        return rep


@dataclass
class ClientScope:
    """A client scope: protocol mappers and role scope mappings shared by clients."""

    id: str
    name: str
    protocol: str
    description: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    mappers: dict[str, ProtocolMapper] = field(default_factory=dict)
    role_ids: set[str] = field(default_factory=set)

    @property
    def in_token_scope(self) -> bool:
        return self.attributes.get("include.in.token.scope", "true") == "true"

    def to_rep(self) -> dict[str, Any]:
        rep: dict[str, Any] = {"id": self.id, "name": self.name}
        if self.description is not None:
            rep["description"] = self.description
        rep["protocol"] = self.protocol
        rep["attributes"] = dict(self.attributes)
        if self.mappers:
            rep["protocolMappers"] = [m.to_rep() for m in self.mappers.values()]
        return rep


@dataclass
class User:
    """A user account, possibly a client's service account."""

    id: str
    username: str
    created: int
    enabled: bool = True
    email: str | None = None
    email_verified: bool = False
    first_name: str | None = None
    last_name: str | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)
    required_actions: list[str] = field(default_factory=list)
    password: str | None = None
    password_id: str = ""
    password_created: int = 0
    service_account_client: str | None = None
    role_ids: set[str] = field(default_factory=set)
    group_ids: set[str] = field(default_factory=set)
    not_before: int = 0

    def to_rep(self, brief: bool = False, attributes: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """The UserRepresentation, showing ``attributes`` (default: all stored)."""
        shown = self.attributes if attributes is None else attributes
        rep: dict[str, Any] = {"id": self.id, "username": self.username}
        if self.first_name is not None:
            rep["firstName"] = self.first_name
        if self.last_name is not None:
            rep["lastName"] = self.last_name
        if self.email is not None:
            rep["email"] = self.email
        rep["emailVerified"] = self.email_verified
        if shown and not brief:
            rep["attributes"] = copy.deepcopy(shown)
        rep["createdTimestamp"] = self.created
        rep["enabled"] = self.enabled
        rep["totp"] = False
        if self.service_account_client is not None:
            rep["serviceAccountClientId"] = self.service_account_client
        if not brief:
            rep["disableableCredentialTypes"] = []
            rep["requiredActions"] = list(self.required_actions)
            rep["notBefore"] = self.not_before
            rep["access"] = {"manage": True}
        return rep


@dataclass
class Group:
    """A group: members inherit its role mappings and those of its ancestors."""

    id: str
    name: str
    parent_id: str | None = None
    description: str | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)
    role_ids: set[str] = field(default_factory=set)


@dataclass
class Session:
    """A user session created by a password grant (and kept by refreshes)."""

    id: str
    user_id: str
    client_id: str
    started: int
    last_refresh: int
    active: bool = True


class Realm:
    """One realm: settings, keys, roles, clients, users and sessions."""

    def __init__(self, name: str, settings: dict[str, Any], management_client: str = REALM_MANAGEMENT) -> None:
        self.id = settings.get("id") or new_id()
        self.name = name
        self.settings: dict[str, Any] = copy.deepcopy(REALM_DEFAULTS)
        self.update(settings)
        self._keys: RealmKeys | None = None
        self.roles: dict[str, Role] = {}
        self.client_scopes: dict[str, ClientScope] = {}
        builtin = {
            scope_name: self.add_client_scope(
                {
                    "name": scope_name,
                    "protocol": protocol,
                    "description": f"OpenID Connect built-in scope: {scope_name}"
                    if protocol == "openid-connect"
                    else f"SAML built-in scope: {scope_name}",
                    "attributes": {
                        "include.in.token.scope": str(in_token).lower(),
                        "display.on.consent.screen": "true",
                    },
                }
            )
            for scope_name, (protocol, in_token) in BUILTIN_SCOPES.items()
        }
        self.default_default_scopes = [builtin[n].id for n in DEFAULT_DEFAULT_SCOPES]
        self.default_optional_scopes = [builtin[n].id for n in DEFAULT_OPTIONAL_SCOPES]
        self.clients: dict[str, Client] = {}
        self.users: dict[str, User] = {}
        self.sessions: dict[str, Session] = {}
        self.groups: dict[str, Group] = {}
        self.user_profile: dict[str, Any] = copy.deepcopy(DEFAULT_USER_PROFILE)
        offline = self.add_role("offline_access", description="${role_offline-access}")
        uma = self.add_role("uma_authorization", description="${role_uma_authorization}")
        self.default_role = self.add_role(f"default-roles-{name}", description="${role_default-roles}")
        self.default_role.composites |= {offline.id, uma.id}
        for client_id, overrides in BUILTIN_CLIENTS.items():
            if client_id == REALM_MANAGEMENT:
                client_id = management_client
            self.add_client({"clientId": client_id, **overrides})
        account = self.client_by_client_id("account")
        assert account is not None
        for role_name in ("view-profile", "manage-account"):
            role = self.add_role(role_name, client=account)
            if role_name == "view-profile":
                self.default_role.composites.add(role.id)
        manage_account = self.client_role(account, "manage-account")
        assert manage_account is not None
        manage_account.composites.add(self.add_role("manage-account-links", client=account).id)
        self.default_role.composites.add(manage_account.id)
        for role_name in (
            "manage-consent",
            "view-consent",
            "view-applications",
            "view-groups",
            "delete-account",
        ):
            self.add_role(role_name, client=account)
        management = self.client_by_client_id(management_client)
        assert management is not None
        self.management_client = management
        self.add_management_roles(management, realm_admin=management_client == REALM_MANAGEMENT)

    @property
    def keys(self) -> RealmKeys:
        """The realm's keys, generated on first use (RSA generation is the slow part of
        creating a realm)."""
        if self._keys is None:
            self._keys = RealmKeys(self.name)
        return self._keys

    # -- roles -------------------------------------------------------------

    def add_role(
        self,
        name: str,
        client: Client | None = None,
        description: str | None = None,
        attributes: dict[str, list[str]] | None = None,
        role_id: str | None = None,
    ) -> Role:
        """Create a role; 409 ``Role with name X already exists`` if taken."""
        if self.find_role(name, client) is not None:
            raise conflict(f"Role with name {name} already exists")
        role = Role(
            id=role_id or new_id(),
            name=name,
            container_id=client.id if client else self.id,
            client_uuid=client.id if client else None,
            description=description,
            attributes=copy.deepcopy(attributes or {}),
        )
        self.roles[role.id] = role
        return role

    def add_management_roles(self, management: Client, realm_admin: bool = True) -> list[Role]:
        """Give a management client (``realm-management``, ``<realm>-realm`` in master)
        Keycloak's admin roles; only ``realm-management`` has the ``realm-admin`` composite."""
        created = {
            name: self.add_role(name, client=management, description=f"${{role_{name}}}") for name in MANAGEMENT_ROLES
        }
        for name, parts in MANAGEMENT_ROLES.items():
            created[name].composites |= {created[p].id for p in parts}
        if realm_admin:
            admin = self.add_role("realm-admin", client=management, description="${role_realm-admin}")
            admin.composites |= {r.id for r in created.values()}
        return list(created.values())

    def find_role(self, name: str, client: Client | None = None) -> Role | None:
        client_uuid = client.id if client else None
        for role in self.roles.values():
            if role.name == name and role.client_uuid == client_uuid:
                return role
        return None

    def realm_role(self, name: str) -> Role | None:
        return self.find_role(name, None)

    def client_role(self, client: Client, name: str) -> Role | None:
        return self.find_role(name, client)

    def realm_roles(self) -> list[Role]:
        return sorted((r for r in self.roles.values() if r.client_uuid is None), key=lambda r: r.name)

    def client_roles(self, client: Client) -> list[Role]:
        return sorted((r for r in self.roles.values() if r.client_uuid == client.id), key=lambda r: r.name)

    def delete_role(self, role: Role) -> None:
        del self.roles[role.id]
        for other in self.roles.values():
            other.composites.discard(role.id)
        for holder in [*self.users.values(), *self.groups.values(), *self.client_scopes.values()]:
            holder.role_ids.discard(role.id)
        for client in self.clients.values():
            client.scope_role_ids.discard(role.id)

    def user_role_ids(self, user: User) -> set[str]:
        """Roles mapped to ``user`` directly or through its groups and their ancestors."""
        role_ids = set(user.role_ids)
        for group_id in user.group_ids:
            group = self.groups.get(group_id)
            while group is not None:
                role_ids |= group.role_ids
                group = self.groups.get(group.parent_id or "")
        return role_ids

    def effective_roles(self, user: User) -> set[str]:
        """Every role ``user`` has: direct, from groups, and through composites."""
        return self.expand(self.user_role_ids(user))

    def expand(self, role_ids: set[str]) -> set[str]:
        """Role ids reachable from ``role_ids`` through composites."""
        seen: set[str] = set()
        stack = list(role_ids)
        while stack:
            role_id = stack.pop()
            if role_id in seen or role_id not in self.roles:
                continue
            seen.add(role_id)
            stack.extend(self.roles[role_id].composites)
        return seen

    # -- clients -----------------------------------------------------------

    def add_client(self, rep: dict[str, Any], service_account: bool = True) -> Client:
        """Create a client from a representation; 409 if the clientId is taken. With
        ``service_account`` False an enabled service account is left for the caller to
        link (realm import)."""
        client_id = rep["clientId"]
        if self.client_by_client_id(client_id) is not None:
            raise conflict(f"Client {client_id} already exists")
        stored = copy.deepcopy(CLIENT_DEFAULTS)
        stored.update({k: copy.deepcopy(v) for k, v in rep.items() if k not in CLIENT_MANAGED})
        client = Client(id=rep.get("id") or new_id(), client_id=client_id, rep=stored)
        protocol = stored.get("protocol") or "openid-connect"
        for key, defaults, target in (
            ("defaultClientScopes", self.default_default_scopes, client.default_scopes),
            ("optionalClientScopes", self.default_optional_scopes, client.optional_scopes),
        ):
            if rep.get(key) is None:
                target.extend(i for i in defaults if self.client_scopes[i].protocol == protocol)
            else:
                found = (self.scope_by_name(n) for n in rep[key])
                target.extend(c.id for c in found if c is not None and c.protocol == protocol)
        if not client.public and not stored.get("bearerOnly"):
            client.secret = rep.get("secret") or new_secret()
        for mapper in rep.get("protocolMappers") or []:
            self.add_mapper(client, mapper)
        self.clients[client.id] = client
        if stored.get("serviceAccountsEnabled") and service_account:
            self.enable_service_account(client)
        return client

    def update_client(self, client: Client, rep: dict[str, Any]) -> None:
        """Apply an update representation (only the given fields change)."""
        new_client_id = rep.get("clientId")
        if new_client_id and new_client_id != client.client_id:
            if self.client_by_client_id(new_client_id) is not None:
                raise conflict(f"Client {new_client_id} already exists")
            client.client_id = new_client_id
        for key, value in rep.items():
            if key in CLIENT_MANAGED:
                continue
            if key == "attributes" and isinstance(value, dict):
                for attr, attr_value in value.items():
                    if attr_value is None:
                        client.attributes.pop(attr, None)
                    else:
                        client.attributes[attr] = attr_value
                continue
            client.rep[key] = copy.deepcopy(value)
        if "secret" in rep and rep["secret"] and not client.public:
            client.secret = rep["secret"]
        if client.public:
            client.secret = None
        elif client.secret is None and not client.rep.get("bearerOnly"):
            client.secret = new_secret()
        if client.rep.get("serviceAccountsEnabled") and client.service_account_user is None:
            self.enable_service_account(client)
        elif not client.rep.get("serviceAccountsEnabled") and client.service_account_user is not None:
            # As Keycloak's ClientManager: turning service accounts off deletes the user.
            if client.service_account_user in self.users:
                self.delete_user(self.users[client.service_account_user])
            client.service_account_user = None

    def enable_service_account(self, client: Client, user: User | None = None) -> User:
        """Create (or link an imported) ``service-account-<clientId>`` user."""
        if user is None:
            user = self.add_user({"username": f"service-account-{client.client_id}".lower(), "enabled": True})
        user.service_account_client = client.id
        client.service_account_user = user.id
        scope = self.scope_by_name(SERVICE_ACCOUNT_SCOPE)
        if scope is not None and scope.id not in client.default_scopes:
            client.default_scopes.append(scope.id)
        return user

    def delete_client(self, client: Client) -> None:
        for role in self.client_roles(client):
            self.delete_role(role)
        if client.service_account_user in self.users:
            self.delete_user(self.users[client.service_account_user])
        del self.clients[client.id]

    def client_by_client_id(self, client_id: str) -> Client | None:
        for client in self.clients.values():
            if client.client_id == client_id:
                return client
        return None

    @staticmethod
    def add_mapper(client: Client | ClientScope, rep: dict[str, Any]) -> ProtocolMapper:
        """Add a protocol mapper to a client or client scope; 409 if it has one of that
        name."""
        name = rep.get("name") or ""
        if any(m.name == name for m in client.mappers.values()):
            raise conflict("Protocol mapper exists with same name")
        mapper = ProtocolMapper(
            id=rep.get("id") or new_id(),
            name=name,
            protocol=rep.get("protocol") or "openid-connect",
            protocol_mapper=rep.get("protocolMapper") or "",
            config={k: str(v) for k, v in (rep.get("config") or {}).items()},
        )
        client.mappers[mapper.id] = mapper
        return mapper

    def client_rep(self, client: Client) -> dict[str, Any]:
        return client.to_rep({i: c.name for i, c in self.client_scopes.items()})

    # -- client scopes ----------------------------------------------------

    def add_client_scope(self, rep: dict[str, Any]) -> ClientScope:
        """Create a client scope; 409 ``Client Scope X already exists``."""
        name = str(rep.get("name") or "")
        if self.scope_by_name(name) is not None:
            raise conflict(f"Client Scope {name} already exists")
        scope = ClientScope(
            id=rep.get("id") or new_id(),
            name=name,
            protocol=rep.get("protocol") or "openid-connect",
        )
        self.update_client_scope(scope, rep)
        for mapper in rep.get("protocolMappers") or []:
            self.add_mapper(scope, mapper)
        self.client_scopes[scope.id] = scope
        return scope

    def update_client_scope(self, scope: ClientScope, rep: dict[str, Any]) -> None:
        name = rep.get("name")
        if name and name != scope.name:
            if self.scope_by_name(name) is not None:
                raise conflict(f"Client Scope {name} already exists")
            scope.name = name
        if "description" in rep:
            scope.description = rep["description"]
        if rep.get("protocol"):
            scope.protocol = rep["protocol"]
        if rep.get("attributes") is not None:
            scope.attributes = {k: str(v) for k, v in rep["attributes"].items()}

    def delete_client_scope(self, scope: ClientScope) -> None:
        for ids in [
            self.default_default_scopes,
            self.default_optional_scopes,
            *(c.default_scopes for c in self.clients.values()),
            *(c.optional_scopes for c in self.clients.values()),
        ]:
            if scope.id in ids:
                ids.remove(scope.id)
        del self.client_scopes[scope.id]

    def scope_by_name(self, name: str) -> ClientScope | None:
        for scope in self.client_scopes.values():
            if scope.name == name:
                return scope
        return None

    # -- users -------------------------------------------------------------

    def add_user(self, rep: dict[str, Any]) -> User:
        """Create a user; 409 ``User exists with same username`` (or email)."""
        username = str(rep.get("username") or "").lower()
        if self.user_by_username(username) is not None:
            raise conflict("User exists with same username")
        email = rep.get("email")
        if email and any(u.email and u.email.lower() == email.lower() for u in self.users.values()):
            raise conflict("User exists with same email")
        user = User(
            id=rep.get("id") or new_id(),
            username=username,
            created=int(rep.get("createdTimestamp") or time.time() * 1000),
        )
        self.apply_user(user, rep)
        user.role_ids.add(self.default_role.id)
        self.users[user.id] = user
        return user

    def apply_user(self, user: User, rep: dict[str, Any]) -> None:
        """Apply the fields of a user representation."""
        if "enabled" in rep:
            user.enabled = bool(rep["enabled"])
        if "email" in rep:
            user.email = rep["email"].lower() if rep["email"] else None
        if "emailVerified" in rep:
            user.email_verified = bool(rep["emailVerified"])
        if "firstName" in rep:
            user.first_name = rep["firstName"]
        if "lastName" in rep:
            user.last_name = rep["lastName"]
        if "attributes" in rep and rep["attributes"] is not None:
            given = {k: (v if isinstance(v, list) else [v]) for k, v in rep["attributes"].items()}
            kept = {k: v for k, v in user.attributes.items() if not self.writable(user, k)}
            user.attributes = {**kept, **{k: v for k, v in given.items() if self.writable(user, k)}}
        if "requiredActions" in rep and rep["requiredActions"] is not None:
            user.required_actions = list(rep["requiredActions"])
        for credential in rep.get("credentials") or []:
            if credential.get("type", "password") == "password" and credential.get("value"):
                self.set_password(user, credential["value"])

    @staticmethod
    def set_password(user: User, password: str) -> None:
        """Replace the user's password credential."""
        user.password = password
        user.password_id = new_id()
        user.password_created = int(time.time() * 1000)

    # User profile (Keycloak 24+): attributes not declared in the realm's user profile
    # are "unmanaged"; by default (no unmanagedAttributePolicy) admin writes to them are
    # silently dropped and they are not shown. Service accounts are exempt through the
    # Admin API (ServiceAccountAttributes).
    def _managed(self, name: str) -> bool:
        return any(a.get("name") == name for a in self.user_profile.get("attributes", []))

    def writable(self, user: User, name: str) -> bool:
        policy = self.user_profile.get("unmanagedAttributePolicy")
        return self._managed(name) or user.service_account_client is not None or policy in ("ENABLED", "ADMIN_EDIT")

    def user_rep(self, user: User, brief: bool = False) -> dict[str, Any]:
        """A user's representation with the attributes an admin may read."""
        policy = self.user_profile.get("unmanagedAttributePolicy")
        shown = {
            k: v
            for k, v in user.attributes.items()
            if self._managed(k)
            or user.service_account_client is not None
            or policy in ("ENABLED", "ADMIN_EDIT", "ADMIN_VIEW")
        }
        return user.to_rep(brief, shown)

    def delete_user(self, user: User) -> None:
        for session_id in [s.id for s in self.sessions.values() if s.user_id == user.id]:
            del self.sessions[session_id]
        del self.users[user.id]

    def user_by_username(self, username: str) -> User | None:
        username = username.lower()
        for user in self.users.values():
            if user.username == username:
                return user
        return None

    def user_or_404(self, user_id: str) -> User:
        user = self.users.get(user_id)
        if user is None:
            raise not_found("User not found")
        return user

    def client_or_404(self, client_uuid: str) -> Client:
        client = self.clients.get(client_uuid)
        if client is None:
            raise not_found("Could not find client")
        return client

    def logout_user(self, user: User) -> None:
        """End every session of ``user`` (admin ``logout``)."""
        for session in self.sessions.values():
            if session.user_id == user.id:
                session.active = False

    # -- groups ------------------------------------------------------------

    def add_group(self, rep: dict[str, Any], parent: Group | None = None) -> Group:
        """Create a group (a subgroup of ``parent``); 409 if a sibling has its name."""
        name = str(rep.get("name") or "")
        parent_id = parent.id if parent else None
        if any(g.name == name and g.parent_id == parent_id for g in self.groups.values()):
            if parent is None:
                raise conflict(f"Top level group named '{name}' already exists.")
            raise conflict(f"Sibling group named '{name}' already exists.")
        group = Group(id=new_id(), name=name, parent_id=parent_id, description=rep.get("description"))
        self.update_group(group, rep)
        self.groups[group.id] = group
        return group

    @staticmethod
    def update_group(group: Group, rep: dict[str, Any]) -> None:
        if rep.get("name"):
            group.name = rep["name"]
        if "description" in rep:
            group.description = rep["description"]
        if rep.get("attributes") is not None:
            group.attributes = {k: (v if isinstance(v, list) else [v]) for k, v in rep["attributes"].items()}

    def delete_group(self, group: Group) -> None:
        for child in [g for g in self.groups.values() if g.parent_id == group.id]:
            self.delete_group(child)
        for user in self.users.values():
            user.group_ids.discard(group.id)
        del self.groups[group.id]

    def group_or_404(self, group_id: str) -> Group:
        group = self.groups.get(group_id)
        if group is None:
            raise not_found("Could not find group by id")
        return group

    def group_path(self, group: Group) -> str:
        names = [group.name]
        parent = self.groups.get(group.parent_id or "")
        while parent is not None:
            names.append(parent.name)
            parent = self.groups.get(parent.parent_id or "")
        return "/" + "/".join(reversed(names))

    def children(self, group: Group | None) -> list[Group]:
        parent_id = group.id if group else None
        return sorted((g for g in self.groups.values() if g.parent_id == parent_id), key=lambda g: g.name)

    def group_rep(self, group: Group, brief: bool = True) -> dict[str, Any]:
        rep: dict[str, Any] = {"id": group.id, "name": group.name}
        if group.description is not None:
            rep["description"] = group.description
        rep["path"] = self.group_path(group)
        if group.parent_id is not None:
            rep["parentId"] = group.parent_id
        rep["subGroupCount"] = len(self.children(group))
        rep["subGroups"] = []
        if not brief:
            rep["attributes"] = copy.deepcopy(group.attributes)
            roles = [self.roles[i] for i in group.role_ids if i in self.roles]
            rep["realmRoles"] = sorted(r.name for r in roles if r.client_uuid is None)
            client_roles: dict[str, list[str]] = {}
            for role in roles:
                if role.client_uuid is not None:
                    owner = self.clients[role.client_uuid].client_id
                    client_roles.setdefault(owner, []).append(role.name)
            rep["clientRoles"] = client_roles
            rep["access"] = {
                "view": True,
                "viewMembers": True,
                "manageMembers": True,
                "manage": True,
                "manageMembership": True,
            }
        return rep

    # -- representation ------------------------------------------------------

    def to_rep(self) -> dict[str, Any]:
        rep: dict[str, Any] = {"id": self.id, "realm": self.name}
        rep.update(copy.deepcopy(self.settings))
        rep["defaultRole"] = self.default_role.to_rep()
        return rep

    def update(self, rep: dict[str, Any]) -> None:
        """Store the realm settings of a representation (not its contents: roles,
        clients, users... are imported by realm_import, or ignored on update as
        Keycloak's realm update does)."""
        for key, value in rep.items():
            if key in NOT_SETTINGS:
                continue
            if key == "attributes" and isinstance(value, dict):
                self.settings.setdefault("attributes", {}).update(value)
                continue
            self.settings[key] = copy.deepcopy(value)
