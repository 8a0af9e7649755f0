"""The WSGI application: URL routing, one lock around all state, error rendering."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from . import oidc
from .admin_api import AdminAPI, Caller
from .errors import KeycloakHTTPError
from .responses import json_response
from .store import Store

AdminHandler = Callable[[AdminAPI, Caller, Request, str, dict[str, Any]], Response]

_R = "/admin/realms/<realm_name>"
_C = _R + "/clients/<client_uuid>"
_U = _R + "/users/<user_id>"
_G = _R + "/groups/<group_id>"
_S = _R + "/client-scopes/<scope_id>"


def _admin_routes() -> list[tuple[str, list[str], AdminHandler]]:
    """(path, methods, handler) of every Admin REST API route."""

    def a(fn: Callable[..., Response], *uses: str) -> AdminHandler:
        """Adapt an AdminAPI method: pass request/base_url only when it takes them."""

        def handler(api: AdminAPI, caller: Caller, request: Request, base: str, kw: dict[str, Any]) -> Response:
            extra: list[Any] = []
            if "request" in uses:
                extra.append(request)
            if "base" in uses:
                extra.append(base)
            return fn(api, caller, *extra, **kw)

        return handler

    api = AdminAPI
    rq, bs = "request", "base"

    def composites(only: str | None = None) -> AdminHandler:
        def handler(api: AdminAPI, caller: Caller, request: Request, base: str, kw: dict[str, Any]) -> Response:
            if request.method == "GET":
                return api.get_composites(caller, request, only=only, **kw)
            return api.change_composites(caller, request, **kw)

        return handler

    def mappings(view: str) -> AdminHandler:
        def handler(api: AdminAPI, caller: Caller, request: Request, base: str, kw: dict[str, Any]) -> Response:
            if request.method == "GET":
                return api.role_mappings(caller, request, view=view, **kw)
            return api.change_role_mappings(caller, request, **kw)

        return handler

    def assigned(optional: bool) -> AdminHandler:
        def handler(api: AdminAPI, caller: Caller, request: Request, base: str, kw: dict[str, Any]) -> Response:
            if request.method == "GET":
                return api.list_assigned_scopes(caller, optional=optional, **kw)
            return api.change_assigned_scope(caller, request, optional=optional, **kw)

        return handler

    routes: list[tuple[str, list[str], AdminHandler]] = [
        ("/admin/realms", ["GET"], a(api.list_realms, rq)),
        ("/admin/realms", ["POST"], a(api.create_realm, rq, bs)),
        (_R, ["GET"], a(api.get_realm)),
        (_R, ["PUT"], a(api.update_realm, rq)),
        (_R, ["DELETE"], a(api.delete_realm)),
        (_R + "/partialImport", ["POST"], a(api.partial_import, rq)),
        (_R + "/partial-export", ["POST"], a(api.partial_export, rq)),
        (_R + "/users/profile", ["GET"], a(api.get_user_profile)),
        (_R + "/users/profile", ["PUT"], a(api.update_user_profile, rq)),
        (_R + "/clients", ["GET"], a(api.list_clients, rq)),
        (_R + "/clients", ["POST"], a(api.create_client, rq, bs)),
        (_C, ["GET"], a(api.get_client)),
        (_C, ["PUT"], a(api.update_client, rq)),
        (_C, ["DELETE"], a(api.delete_client)),
        (_C + "/client-secret", ["GET"], a(api.get_client_secret)),
        (_C + "/client-secret", ["POST"], a(api.regenerate_client_secret)),
        (_C + "/service-account-user", ["GET"], a(api.service_account_user)),
        (_C + "/certificates/<attr>", ["GET"], a(api.client_certificate)),
        (_R + "/client-scopes", ["GET"], a(api.list_client_scopes)),
        (_R + "/client-scopes", ["POST"], a(api.create_client_scope, rq, bs)),
        (_S, ["GET"], a(api.get_client_scope)),
        (_S, ["PUT"], a(api.update_client_scope, rq)),
        (_S, ["DELETE"], a(api.delete_client_scope)),
        (_C + "/default-client-scopes", ["GET"], assigned(False)),
        (_C + "/default-client-scopes/<scope_id>", ["PUT", "DELETE"], assigned(False)),
        (_C + "/optional-client-scopes", ["GET"], assigned(True)),
        (_C + "/optional-client-scopes/<scope_id>", ["PUT", "DELETE"], assigned(True)),
        (_R + "/default-default-client-scopes", ["GET"], assigned(False)),
        (_R + "/default-default-client-scopes/<scope_id>", ["PUT", "DELETE"], assigned(False)),
        (_R + "/default-optional-client-scopes", ["GET"], assigned(True)),
        (_R + "/default-optional-client-scopes/<scope_id>", ["PUT", "DELETE"], assigned(True)),
        (_R + "/roles-by-id/<role_id>", ["GET"], a(api.get_role_by_id)),
        (_R + "/roles-by-id/<role_id>", ["PUT"], a(api.update_role_by_id, rq)),
        (_R + "/roles-by-id/<role_id>", ["DELETE"], a(api.delete_role_by_id)),
        (_R + "/roles-by-id/<role_id>/composites", ["GET", "POST", "DELETE"], composites()),
        (_R + "/roles-by-id/<role_id>/composites/realm", ["GET"], composites("realm")),
        (_R + "/users", ["GET"], a(api.list_users, rq)),
        (_R + "/users", ["POST"], a(api.create_user, rq, bs)),
        (_R + "/users/count", ["GET"], a(api.count_users, rq)),
        (_U, ["GET"], a(api.get_user)),
        (_U, ["PUT"], a(api.update_user, rq)),
        (_U, ["DELETE"], a(api.delete_user)),
        (_U + "/reset-password", ["PUT"], a(api.reset_password, rq)),
        (_U + "/credentials", ["GET"], a(api.user_credentials)),
        (_U + "/credentials/<credential_id>", ["DELETE"], a(api.delete_credential)),
        (_U + "/groups", ["GET"], a(api.user_groups, rq)),
        (_U + "/groups/count", ["GET"], a(api.count_user_groups, rq)),
        (_U + "/groups/<group_id>", ["PUT", "DELETE"], a(api.change_membership, rq)),
        (_U + "/consents", ["GET"], a(api.user_consents)),
        (_U + "/sessions", ["GET"], a(api.user_sessions)),
        (_U + "/logout", ["POST"], a(api.user_logout)),
        (_R + "/groups", ["GET"], a(api.list_groups, rq)),
        (_R + "/groups", ["POST"], a(api.create_group, rq, bs)),
        (_R + "/groups/count", ["GET"], a(api.count_groups, rq)),
        (_G, ["GET"], a(api.get_group)),
        (_G, ["PUT"], a(api.update_group, rq)),
        (_G, ["DELETE"], a(api.delete_group)),
        (_G + "/children", ["GET"], a(api.list_groups, rq)),
        (_G + "/children", ["POST"], a(api.create_group, rq, bs)),
        (_G + "/members", ["GET"], a(api.group_members, rq)),
    ]
    # Protocol mappers of clients and of client scopes: same handlers.
    for owner in (_C, _S):
        models = owner + "/protocol-mappers/models"
        routes += [
            (models, ["GET"], a(api.list_mappers)),
            (models, ["POST"], a(api.create_mapper, rq, bs)),
            (models + "/<mapper_id>", ["GET"], a(api.get_mapper)),
            (models + "/<mapper_id>", ["PUT"], a(api.update_mapper, rq)),
            (models + "/<mapper_id>", ["DELETE"], a(api.delete_mapper)),
        ]
    # Role mappings of users and groups, scope mappings of clients and client scopes.
    for base in (
        _U + "/role-mappings",
        _G + "/role-mappings",
        _R + "/clients/<scoped_client>/scope-mappings",
        _S + "/scope-mappings",
    ):
        routes += [
            (base, ["GET"], a(api.all_role_mappings)),
            (base + "/realm", ["GET", "POST", "DELETE"], mappings("direct")),
            (base + "/realm/available", ["GET"], mappings("available")),
            (base + "/realm/composite", ["GET"], mappings("composite")),
            (base + "/clients/<client_uuid>", ["GET", "POST", "DELETE"], mappings("direct")),
            (base + "/clients/<client_uuid>/available", ["GET"], mappings("available")),
            (base + "/clients/<client_uuid>/composite", ["GET"], mappings("composite")),
        ]
    # Realm roles under /roles, client roles under /clients/{id}/roles: same handlers.
    for base in (_R + "/roles", _C + "/roles"):
        routes += [
            (base, ["GET"], a(api.list_roles, rq)),
            (base, ["POST"], a(api.create_role, rq, bs)),
            (base + "/<role_name>", ["GET"], a(api.get_role)),
            (base + "/<role_name>", ["PUT"], a(api.update_role, rq)),
            (base + "/<role_name>", ["DELETE"], a(api.delete_role)),
            (base + "/<role_name>/users", ["GET"], a(api.role_users, rq)),
            (base + "/<role_name>/groups", ["GET"], a(api.role_groups, rq)),
            (base + "/<role_name>/composites", ["GET", "POST", "DELETE"], composites()),
            (base + "/<role_name>/composites/realm", ["GET"], composites("realm")),
        ]
    return routes


def _composites_of_client() -> AdminHandler:
    def handler(api: AdminAPI, caller: Caller, request: Request, base: str, kw: dict[str, Any]) -> Response:
        only = kw.pop("only_client")
        return api.get_composites(caller, request, only=only, **kw)

    return handler


_OIDC = "/realms/<realm>/protocol/openid-connect"


class KeycloakApp:
    """WSGI app serving the OIDC endpoints and the Admin REST API."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.admin = AdminAPI(store)
        rules = [
            Rule("/realms/<realm>", endpoint="realm_info", methods=["GET"]),
            Rule(
                "/realms/<realm>/.well-known/openid-configuration",
                endpoint="well_known",
                methods=["GET"],
            ),
            Rule(_OIDC + "/certs", endpoint="certs", methods=["GET"]),
            Rule(_OIDC + "/token", endpoint="token", methods=["POST"]),
            Rule(_OIDC + "/userinfo", endpoint="userinfo", methods=["GET", "POST"]),
            Rule(_OIDC + "/token/introspect", endpoint="introspect", methods=["POST"]),
            Rule(_OIDC + "/logout", endpoint="logout", methods=["POST"]),
        ]
        self.admin_handlers: dict[str, AdminHandler] = {}
        for index, (path, methods, handler) in enumerate(_admin_routes()):
            name = f"admin{index}"
            self.admin_handlers[name] = handler
            rules.append(Rule(path, endpoint=name, methods=methods))
        client_composites = _composites_of_client()
        for index, path in enumerate(
            (
                _R + "/roles-by-id/<role_id>/composites/clients/<only_client>",
                _R + "/roles/<role_name>/composites/clients/<only_client>",
                _C + "/roles/<role_name>/composites/clients/<only_client>",
            )
        ):
            name = f"admin_client_composites{index}"
            self.admin_handlers[name] = client_composites
            rules.append(Rule(path, endpoint=name, methods=["GET"]))
        self.url_map = Map(rules, strict_slashes=False, merge_slashes=False)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        return self.dispatch(request)(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        base = request.host_url.rstrip("/")
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, args = adapter.match()
            with self.store.lock:
                return self.handle(str(endpoint), args, request, base)
        except KeycloakHTTPError as error:
            if error.body is None:
                return Response(status=error.status, headers=error.headers)
            return json_response(error.body, error.status, error.headers)
        except MethodNotAllowed:
            return json_response({"error": "HTTP 405 Method Not Allowed"}, 405)
        except NotFound:
            return json_response({"error": "HTTP 404 Not Found"}, 404)
        except HTTPException as error:
            return json_response({"error": f"HTTP {error.code} {error.name}"}, error.code or 500)
        except Exception:  # noqa: BLE001 - an uncaught error, rendered as Keycloak does
            traceback.print_exc()
            return json_response(
                {
                    "error": "unknown_error",
                    "error_description": "For more on this error consult the server log.",
                },
                500,
            )

    def handle(self, endpoint: str, args: dict[str, Any], request: Request, base: str) -> Response:
        if endpoint in self.admin_handlers:
            caller = self.admin.caller(request)
            return self.admin_handlers[endpoint](self.admin, caller, request, base, args)
        realm = self.store.realm_or_404(args["realm"])
        if endpoint == "realm_info":
            return oidc.realm_info(base, realm)
        if endpoint == "well_known":
            return oidc.well_known(base, realm)
        if endpoint == "certs":
            return json_response(realm.keys.jwks())
        if endpoint == "token":
            return oidc.token(base, realm, request)
        if endpoint == "userinfo":
            return oidc.userinfo(realm, request)
        if endpoint == "introspect":
            return oidc.introspect(realm, request)
        return oidc.logout(realm, request)
