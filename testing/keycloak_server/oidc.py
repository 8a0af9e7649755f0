"""OpenID Connect endpoints of a realm: discovery, certs, token, userinfo,
introspection and logout, with Keycloak's claims, lifespans and error bodies.

Lifespans follow Keycloak 26.3: an access token lives ``access.token.lifespan``
(client attribute) or the realm's ``accessTokenLifespan``, and its ``exp`` is cut to
the end of the session it belongs to, ``ssoSessionMaxLifespan`` (or a shorter
``clientSessionMaxLifespan``) after the session started. Client-credentials grants
start a fresh (transient) session each time, so their tokens are capped at SSO
Session Max too: keycloak/keycloak#43410.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from werkzeug.wrappers import Request, Response

from . import mappers
from .errors import KeycloakHTTPError, oauth_error
from .realm import Client, ClientScope, ProtocolMapper, Realm, Session, User, new_id
from .responses import json_response, no_content

INVALID_CLIENT = "Invalid client or Invalid client credentials"


def issuer(base_url: str, realm: Realm) -> str:
    return f"{base_url}/realms/{realm.name}"


def well_known(base_url: str, realm: Realm) -> Response:
    """The realm's ``.well-known/openid-configuration``."""
    iss = issuer(base_url, realm)
    oidc = f"{iss}/protocol/openid-connect"
    algs = [
        "PS384",
        "RS384",
        "EdDSA",
        "ES384",
        "HS256",
        "HS512",
        "ES256",
        "RS256",
        "HS384",
        "ES512",
        "PS256",
        "PS512",
        "RS512",
    ]
    enc_algs = [
        "ECDH-ES+A256KW",
        "ECDH-ES+A192KW",
        "ECDH-ES+A128KW",
        "RSA-OAEP",
        "RSA-OAEP-256",
        "RSA1_5",
        "ECDH-ES",
    ]
    enc_encs = ["A256GCM", "A192GCM", "A128GCM", "A128CBC-HS256", "A192CBC-HS384", "A256CBC-HS512"]
    auth_methods = [
        "private_key_jwt",
        "client_secret_basic",
        "client_secret_post",
        "tls_client_auth",
        "client_secret_jwt",
    ]
    endpoints = {
        "token_endpoint": f"{oidc}/token",
        "revocation_endpoint": f"{oidc}/revoke",
        "introspection_endpoint": f"{oidc}/token/introspect",
        "device_authorization_endpoint": f"{oidc}/auth/device",
        "registration_endpoint": f"{oidc}/registrations",
        "userinfo_endpoint": f"{oidc}/userinfo",
        "pushed_authorization_request_endpoint": f"{oidc}/ext/par/request",
        "backchannel_authentication_endpoint": f"{oidc}/ext/ciba/auth",
    }
    doc = {
        "issuer": iss,
        "authorization_endpoint": f"{oidc}/auth",
        **endpoints,
        "end_session_endpoint": f"{oidc}/logout",
        "frontchannel_logout_session_supported": True,
        "frontchannel_logout_supported": True,
        "jwks_uri": f"{oidc}/certs",
        "check_session_iframe": f"{oidc}/login-status-iframe.html",
        "grant_types_supported": [
            "authorization_code",
            "client_credentials",
            "implicit",
            "password",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code",
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "urn:ietf:params:oauth:grant-type:uma-ticket",
            "urn:openid:params:grant-type:ciba",
        ],
        "acr_values_supported": ["0", "1"],
        "response_types_supported": [
            "code",
            "none",
            "id_token",
            "token",
            "id_token token",
            "code id_token",
            "code token",
            "code id_token token",
        ],
        "subject_types_supported": ["public", "pairwise"],
        "prompt_values_supported": ["none", "login", "consent"],
        "id_token_signing_alg_values_supported": algs,
        "id_token_encryption_alg_values_supported": enc_algs,
        "id_token_encryption_enc_values_supported": enc_encs,
        "userinfo_signing_alg_values_supported": [*algs, "none"],
        "userinfo_encryption_alg_values_supported": enc_algs,
        "userinfo_encryption_enc_values_supported": enc_encs,
        "request_object_signing_alg_values_supported": [*algs, "none"],
        "request_object_encryption_alg_values_supported": enc_algs,
        "request_object_encryption_enc_values_supported": enc_encs,
        "response_modes_supported": [
            "query",
            "fragment",
            "form_post",
            "query.jwt",
            "fragment.jwt",
            "form_post.jwt",
            "jwt",
        ],
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": algs,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_signing_alg_values_supported": algs,
        "authorization_signing_alg_values_supported": algs,
        "authorization_encryption_alg_values_supported": enc_algs,
        "authorization_encryption_enc_values_supported": enc_encs,
        "claims_supported": [
            "aud",
            "sub",
            "iss",
            "auth_time",
            "name",
            "given_name",
            "family_name",
            "preferred_username",
            "email",
            "acr",
        ],
        "claim_types_supported": ["normal"],
        "claims_parameter_supported": True,
        "scopes_supported": [
            "openid",
            "profile",
            "email",
            "roles",
            "web-origins",
            "acr",
            "basic",
            "address",
            "phone",
            "offline_access",
            "organization",
            "microprofile-jwt",
            "service_account",
        ],
        "request_parameter_supported": True,
        "request_uri_parameter_supported": True,
        "require_request_uri_registration": True,
        "code_challenge_methods_supported": ["plain", "S256"],
        "tls_client_certificate_bound_access_tokens": True,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_signing_alg_values_supported": algs,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "backchannel_token_delivery_modes_supported": ["poll", "ping"],
        "backchannel_authentication_request_signing_alg_values_supported": [
            "PS384",
            "RS384",
            "EdDSA",
            "ES384",
            "ES256",
            "RS256",
            "ES512",
            "PS256",
            "PS512",
            "RS512",
        ],
        "require_pushed_authorization_requests": False,
        "pushed_authorization_request_endpoint": endpoints["pushed_authorization_request_endpoint"],
        "mtls_endpoint_aliases": endpoints,
        "authorization_response_iss_parameter_supported": True,
    }
    return json_response(doc)


def realm_info(base_url: str, realm: Realm) -> Response:
    """``GET /realms/{realm}``: the realm's public key and service URLs."""
    iss = issuer(base_url, realm)
    return json_response(
        {
            "realm": realm.name,
            "public_key": realm.keys.public_key_b64(),
            "token-service": f"{iss}/protocol/openid-connect",
            "account-service": f"{iss}/account",
            "tokens-not-before": realm.settings.get("notBefore", 0),
        }
    )


def _form(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.form.items()}


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip()).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    if ":" not in decoded:
        return None
    client_id, secret = decoded.split(":", 1)
    # RFC 6749 2.3.1: both parts are form-urlencoded before Base64.
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


def authenticate_client(request: Request, realm: Realm) -> Client:
    """Keycloak's ``client-secret`` authenticator (form params or HTTP Basic)."""
    form = _form(request)
    client_id = secret = None
    basic = _basic_credentials(request)
    if basic is not None:
        client_id, secret = basic
    if "client_id" in form:
        client_id = form["client_id"]
    if "client_secret" in form:
        secret = form["client_secret"]
    if client_id is None:
        raise oauth_error(400, "invalid_client", "Missing client_id parameter")
    client = realm.client_by_client_id(client_id)
    if client is None or not client.enabled:
        raise oauth_error(401, "invalid_client", INVALID_CLIENT)
    if client.public:
        return client
    if secret is None or client.secret is None or secret != client.secret:
        raise oauth_error(401, "unauthorized_client", INVALID_CLIENT)
    return client


def profile_claims(user: User) -> dict[str, Any]:
    """Claims of the ``profile`` and ``email`` scopes."""
    claims: dict[str, Any] = {"email_verified": user.email_verified}
    full = " ".join(p for p in (user.first_name, user.last_name) if p)
    if full:
        claims["name"] = full
    claims["preferred_username"] = user.username
    if user.first_name:
        claims["given_name"] = user.first_name
    if user.last_name:
        claims["family_name"] = user.last_name
    if user.email:
        claims["email"] = user.email
    return claims


def _at_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode()).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


class TokenIssuer:
    """Mints tokens of one realm for one request."""

    def __init__(self, base_url: str, realm: Realm, remote_addr: str) -> None:
        self.base_url = base_url
        self.realm = realm
        self.remote_addr = remote_addr
        self.iss = issuer(base_url, realm)

    def _timeout(self, client: Client, attribute: str, realm_key: str, fallback: int) -> int:
        """A per-client session setting, else the realm's, else ``fallback`` (seconds)."""
        value = client.attributes.get(attribute, "").strip()
        if value.lstrip("-").isdigit() and int(value) > 0:
            return int(value)
        realm_value = int(self.realm.settings.get(realm_key) or 0)
        return realm_value if realm_value > 0 else fallback

    def sso_max(self) -> int:
        """Realm SSO Session Max (Keycloak's default 36000 s when unset)."""
        value = int(self.realm.settings.get("ssoSessionMaxLifespan") or 0)
        return value if value > 0 else 36000

    def session_end(self, client: Client, started: int) -> int:
        """End of the client session: Client Session Max (client attribute, else realm),
        never later than the user session's SSO Session Max (SessionExpirationUtils)."""
        sso_max = self.sso_max()
        client_max = self._timeout(client, "client.session.max.lifespan", "clientSessionMaxLifespan", sso_max)
        return min(started + client_max, started + sso_max)

    def access_exp(self, client: Client, now: int, started: int) -> int:
        """Access token expiry: client ``access.token.lifespan`` (non-blank) or the realm's
        ``accessTokenLifespan``; -1 means "until the session max"; then cut to the
        session end."""
        raw = client.attributes.get("access.token.lifespan", "").strip()
        lifespan = int(raw) if raw else int(self.realm.settings.get("accessTokenLifespan") or 300)
        exp = started + self.sso_max() if lifespan == -1 else now + lifespan
        return min(exp, self.session_end(client, started))

    def _roles(self, grant: Grant) -> tuple[list[str], dict[str, dict[str, list[str]]]]:
        """Role claims: the user's effective roles, and with ``fullScopeAllowed`` off
        only those within the scope of the client (its own roles, its scope mappings
        and those of the token's client scopes), as TokenManager.getAccess does."""
        realm, client = self.realm, grant.client
        role_ids = realm.effective_roles(grant.user)
        if not client.rep.get("fullScopeAllowed", True):
            allowed = {r.id for r in realm.client_roles(client)} | client.scope_role_ids
            for scope in grant.scopes:
                allowed |= scope.role_ids
            role_ids &= realm.expand(allowed)
        realm_roles: list[str] = []
        client_roles: dict[str, dict[str, list[str]]] = {}
        for role_id in sorted(role_ids):
            role = realm.roles[role_id]
            if role.client_uuid is None:
                realm_roles.append(role.name)
            else:
                owner = realm.clients[role.client_uuid]
                client_roles.setdefault(owner.client_id, {"roles": []})["roles"].append(role.name)
        return sorted(realm_roles), client_roles

    @staticmethod
    def user_claims(grant: Grant) -> dict[str, Any]:
        """Claims of the built-in ``profile`` and ``email`` scopes, when active."""
        names = grant.scope_names
        claims = profile_claims(grant.user)
        keep = ({"name", "preferred_username", "given_name", "family_name"} if "profile" in names else set()) | (
            {"email", "email_verified"} if "email" in names else set()
        )
        return {k: v for k, v in claims.items() if k in keep}

    def access_claims(self, grant: Grant) -> dict[str, Any]:
        client, names = grant.client, grant.scope_names
        now = int(time.time())
        claims: dict[str, Any] = {
            "exp": self.access_exp(client, now, grant.started),
            "iat": now,
            "jti": grant.jti(),
            "iss": self.iss,
        }
        realm_roles, client_roles = self._roles(grant) if "roles" in names else ([], {})
        # The "roles" scope's audience resolve: every other client whose roles are in.
        audiences = [c for c in client_roles if c != client.client_id]
        if audiences:
            claims["aud"] = audiences[0] if len(audiences) == 1 else audiences
        claims.update(sub=grant.user.id, typ="Bearer", azp=client.client_id)
        if grant.session is not None:
            claims["sid"] = grant.session.id
        if "acr" in names:
            claims["acr"] = "1"
        if "web-origins" in names and client.rep.get("webOrigins"):
            claims["allowed-origins"] = list(client.rep["webOrigins"])
        if realm_roles:
            claims["realm_access"] = {"roles": realm_roles}
        if client_roles:
            claims["resource_access"] = client_roles
        claims["scope"] = grant.scope
        claims.update(self.user_claims(grant))
        if grant.service_account and "service_account" in names:
            claims.update(
                clientHost=self.remote_addr,
                clientAddress=self.remote_addr,
                client_id=client.client_id,
            )
        mappers.apply(claims, "access", self.realm, grant.mappers(), grant.user)
        return claims

    def id_claims(self, grant: Grant, access: dict[str, Any], access_token: str) -> dict[str, Any]:
        """An ID token's claims; a client-credentials grant without a session has no
        ``auth_time`` or ``sid``."""
        claims: dict[str, Any] = {
            "exp": access["exp"],
            "iat": access["iat"],
            "jti": str(uuid.uuid4()),
            "iss": self.iss,
            "aud": grant.client.client_id,
            "sub": grant.user.id,
            "typ": "ID",
            "azp": grant.client.client_id,
            "at_hash": _at_hash(access_token),
        }
        if grant.session is not None:
            claims.update(auth_time=grant.session.started, sid=grant.session.id)
        if "acr" in grant.scope_names:
            claims["acr"] = "1"
        claims.update(self.user_claims(grant))
        mappers.apply(claims, "id", self.realm, grant.mappers(), grant.user)
        return claims

    def refresh_claims(self, grant: Grant) -> dict[str, Any]:
        assert grant.session is not None
        now = int(time.time())
        sso_idle = int(self.realm.settings.get("ssoSessionIdleTimeout") or 0)
        idle = self._timeout(
            grant.client,
            "client.session.idle.timeout",
            "clientSessionIdleTimeout",
            sso_idle if sso_idle > 0 else 1800,
        )
        exp = min(now + idle, self.session_end(grant.client, grant.session.started))
        return {
            "exp": exp,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "iss": self.iss,
            "aud": self.iss,
            "sub": grant.user.id,
            "typ": "Refresh",
            "azp": grant.client.client_id,
            "sid": grant.session.id,
            "scope": grant.scope,
        }

    def response(self, grant: Grant) -> Response:
        access = self.access_claims(grant)
        now = access["iat"]
        access_token = self.realm.keys.sign(access)
        body: dict[str, Any] = {"access_token": access_token, "expires_in": access["exp"] - now}
        if grant.session is None:
            body["refresh_expires_in"] = 0
        else:
            refresh = self.refresh_claims(grant)
            body["refresh_expires_in"] = refresh["exp"] - refresh["iat"]  # its own clock reading: no second lost
            body["refresh_token"] = self.realm.keys.sign_refresh(refresh)
        body["token_type"] = "Bearer"
        if "openid" in grant.scope.split():
            body["id_token"] = self.realm.keys.sign(self.id_claims(grant, access, access_token))
        body["not-before-policy"] = 0
        if grant.session is not None:
            body["session_state"] = grant.session.id
        body["scope"] = grant.scope
        return json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@dataclass
class Grant:
    """What a token is minted for: client, user, scopes, session."""

    client: Client
    user: User
    scope: str
    scopes: list[ClientScope]
    session: Session | None
    started: int
    service_account: bool = False
    #: Keycloak 26's grant shortcut in the access token's ``jti`` (``cc`` client credentials,
    #: ``ro`` password, ``rt`` refresh), behind the session type (``on`` online, ``tr``
    #: transient: no session) and ``rt`` (a regular, not lightweight, token).
    kind: str = ""

    def jti(self) -> str:
        if not self.kind:
            return str(uuid.uuid4())
        return f"{'tr' if self.session is None else 'on'}rt{self.kind}:{uuid.uuid4()}"

    @property
    def scope_names(self) -> set[str]:
        return {c.name for c in self.scopes}

    def mappers(self) -> list[ProtocolMapper]:
        """The client's protocol mappers, then those of its active client scopes."""
        found = list(self.client.mappers.values())
        for scope in self.scopes:
            found.extend(scope.mappers.values())
        return found


def resolve_scopes(realm: Realm, client: Client, requested: str | None) -> tuple[str, list[ClientScope]]:
    """A token's client scopes: the client's default scopes and the optional ones
    asked for (any other requested scope is Keycloak's 400 ``invalid_scope``), and its
    ``scope`` claim: ``openid`` when asked for (every grant, client credentials too) and the names of those
    scopes marked ``include.in.token.scope``."""
    asked = (requested or "").split()
    default = [realm.client_scopes[i] for i in client.default_scopes]
    optional = {realm.client_scopes[i].name: realm.client_scopes[i] for i in client.optional_scopes}
    default_names = {c.name for c in default}
    unknown = [n for n in asked if n != "openid" and n not in default_names and n not in optional]
    if unknown:
        raise oauth_error(400, "invalid_scope", f"Invalid scopes: {requested}")
    active = default + [optional[n] for n in dict.fromkeys(asked) if n in optional]
    names = ["openid"] if "openid" in asked else []
    names += [c.name for c in active if c.in_token_scope and c.protocol == "openid-connect"]
    return " ".join(names), active


def token(base_url: str, realm: Realm, request: Request) -> Response:
    """``POST .../protocol/openid-connect/token``."""
    form = _form(request)
    grant_type = form.get("grant_type")
    if not grant_type:
        raise oauth_error(400, "invalid_request", "Missing form parameter: grant_type")
    if grant_type not in ("client_credentials", "password", "refresh_token"):
        raise oauth_error(400, "unsupported_grant_type", "Unsupported grant_type")
    client = authenticate_client(request, realm)
    minter = TokenIssuer(base_url, realm, request.remote_addr or "127.0.0.1")
    now = int(time.time())
    if grant_type == "client_credentials":
        return _client_credentials(minter, realm, client, form, now)
    if grant_type == "password":
        return _password(minter, realm, client, form, now)
    return _refresh(minter, realm, client, form)


def _client_credentials(minter: TokenIssuer, realm: Realm, client: Client, form: dict[str, str], now: int) -> Response:
    if client.rep.get("bearerOnly"):
        raise oauth_error(401, "unauthorized_client", "Bearer-only client not allowed to retrieve service account")
    if client.public:
        raise oauth_error(401, "unauthorized_client", "Public client not allowed to retrieve service account")
    if not client.rep.get("serviceAccountsEnabled"):
        raise oauth_error(401, "unauthorized_client", "Client not enabled to retrieve service account")
    user = realm.users.get(client.service_account_user or "")
    if user is None:
        raise oauth_error(401, "invalid_request", "The associated service account for the client does not exist")
    if not user.enabled:
        raise oauth_error(401, "invalid_request", f"User '{user.username}' disabled")
    # Keycloak 26 answers scope=openid with `openid` in `scope` and an ID token here too.
    scope, scopes = resolve_scopes(realm, client, form.get("scope"))
    session = None
    if client.attributes.get("client_credentials.use_refresh_token") == "true":
        session = Session(id=new_id(), user_id=user.id, client_id=client.id, started=now, last_refresh=now)
        realm.sessions[session.id] = session
    return minter.response(Grant(client, user, scope, scopes, session, now, True, "cc"))


def _password(minter: TokenIssuer, realm: Realm, client: Client, form: dict[str, str], now: int) -> Response:
    if not client.rep.get("directAccessGrantsEnabled"):
        raise oauth_error(400, "unauthorized_client", "Client not allowed for direct access grants")
    username = form.get("username") or ""
    user = realm.user_by_username(username)
    if user is None and "@" in username:
        user = next((u for u in realm.users.values() if u.email == username.lower()), None)
    if user is None or user.password is None or user.password != form.get("password"):
        raise oauth_error(401, "invalid_grant", "Invalid user credentials")
    if not user.enabled:
        raise oauth_error(400, "invalid_grant", "Account disabled")
    if user.required_actions:
        raise oauth_error(400, "invalid_grant", "Account is not fully set up")
    scope, scopes = resolve_scopes(realm, client, form.get("scope"))
    session = Session(id=new_id(), user_id=user.id, client_id=client.id, started=now, last_refresh=now)
    realm.sessions[session.id] = session
    return minter.response(Grant(client, user, scope, scopes, session, now, kind="ro"))


def _refresh(minter: TokenIssuer, realm: Realm, client: Client, form: dict[str, str]) -> Response:
    raw = form.get("refresh_token")
    if not raw:
        raise oauth_error(400, "invalid_request", "Missing parameter: refresh_token")
    claims = realm.keys.verify_refresh(raw)
    if claims is None:
        raise oauth_error(400, "invalid_grant", "Invalid refresh token")
    if claims.get("azp") != client.client_id:
        raise oauth_error(
            400,
            "invalid_grant",
            "Invalid refresh token. Token client and authorized client don't match",
        )
    session = realm.sessions.get(claims.get("sid", ""))
    user = realm.users.get(claims.get("sub", ""))
    if session is None or not session.active or user is None:
        raise oauth_error(400, "invalid_grant", "Session not active")
    if not user.enabled:
        raise oauth_error(400, "invalid_grant", "User disabled")
    session.last_refresh = int(time.time())
    scope, scopes = resolve_scopes(realm, client, claims.get("scope"))
    service_account = user.service_account_client == client.id
    return minter.response(Grant(client, user, scope, scopes, session, session.started, service_account, "rt"))


def bearer_claims(realm: Realm, request: Request) -> dict[str, Any] | None:
    """Claims of the request's valid bearer access token for ``realm``, else None.

    A token tied to a session (``sid``) is only valid while that session is active,
    as Keycloak checks for admin and userinfo requests.
    """
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer "):
        return None
    return active_claims(realm, header[7:].strip())


def active_claims(realm: Realm, raw: str) -> dict[str, Any] | None:
    """Claims of an access token Keycloak still honours: valid signature, unexpired,
    its session (if any) active, its user enabled and its client present and enabled
    (TokenManager's checks for introspection, userinfo and admin requests)."""
    claims = realm.keys.verify(raw)
    if claims is None or claims.get("typ") != "Bearer":
        return None
    sid = claims.get("sid")
    if sid is not None:
        session = realm.sessions.get(sid)
        if session is None or not session.active:
            return None
    user = realm.users.get(claims.get("sub", ""))
    client = realm.client_by_client_id(claims.get("azp", ""))
    if user is None or not user.enabled or client is None or not client.enabled:
        return None
    return claims


def userinfo(realm: Realm, request: Request) -> Response:
    """``GET|POST .../userinfo`` for a valid bearer token."""
    claims = bearer_claims(realm, request)
    if claims is None:
        raise KeycloakHTTPError(
            401,
            {"error": "invalid_token", "error_description": "Token verification failed"},
            {
                "WWW-Authenticate": 'Bearer realm="' + realm.name + '", error="invalid_token", '
                'error_description="Token verification failed"'
            },
        )
    user = realm.users[claims["sub"]]
    client = realm.client_by_client_id(claims["azp"])
    assert client is not None  # active_claims checked it
    scope, scopes = resolve_scopes(realm, client, claims.get("scope"))
    grant = Grant(client, user, scope, scopes, None, 0)
    body: dict[str, Any] = {"sub": user.id}
    body.update(TokenIssuer.user_claims(grant))
    mappers.apply(body, "userinfo", realm, grant.mappers(), user)
    return json_response(body)


def introspect(realm: Realm, request: Request) -> Response:
    """``POST .../token/introspect`` (RFC 7662) for confidential clients."""
    client = authenticate_client(request, realm)
    if client.public:
        raise oauth_error(401, "invalid_request", "Client not allowed.")
    raw = request.form.get("token")
    if not raw:
        raise oauth_error(400, "invalid_request", "Token not provided.")
    claims = active_claims(realm, raw)
    if claims is None:
        return json_response({"active": False})
    body = dict(claims)
    body.update(
        client_id=claims.get("azp"),
        username=realm.users[claims["sub"]].username,
        token_type="Bearer",
        active=True,
    )
    return json_response(body)


def logout(realm: Realm, request: Request) -> Response:
    """``POST .../logout`` with a refresh token: end its session."""
    client = authenticate_client(request, realm)
    raw = request.form.get("refresh_token")
    if not raw:
        raise oauth_error(400, "invalid_request", "No refresh token")
    claims = realm.keys.verify_refresh(raw)
    if claims is None:
        raise oauth_error(400, "invalid_grant", "Invalid refresh token")
    if claims.get("azp") != client.client_id:
        raise oauth_error(400, "invalid_grant", "Invalid refresh token")
    session = realm.sessions.get(claims.get("sid", ""))
    if session is not None:
        session.active = False
    return no_content()
