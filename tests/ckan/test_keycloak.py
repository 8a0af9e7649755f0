"""The plugin on the Keycloak issuer (the Keycloak-compatible test server): roles from Keycloak,
access tokens and client-credentials tokens through the actions and the page."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import ckan.plugins.toolkit as tk
import jwt
import pytest
import requests
from ckan.tests import factories
from ckanext.mltokens import service
from keycloak import KeycloakAdmin

from testing.keycloak_server.fixtures import KeycloakServerInfo, keycloak_realm, keycloak_server  # noqa: F401
from token_service.issuers.keycloak_bootstrap import admin_secret, bootstrap

from .test_views import PASSWORD, Visitor

pytestmark = pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens")

PREDICT = "model:sentiment:predict"
ROLES = (PREDICT, "model:sentiment:train", "model:vision:predict")


@pytest.fixture
def keycloak(keycloak_server: KeycloakServerInfo, keycloak_realm: str, ckan_config: Any) -> KeycloakAdmin:  # noqa: F811
    """A bootstrapped token realm, and CKAN's token settings pointed at it."""
    settings = service.settings().replace(
        issuer="keycloak", keycloak_server_url=keycloak_server.url, keycloak_realm=keycloak_realm
    )
    admin = keycloak_server.admin()
    bootstrap(admin, settings, ROLES)
    admin.change_current_realm(keycloak_realm)
    ckan_config.update(
        {
            "ckanext.mltokens.issuer": "keycloak",
            "ckanext.mltokens.keycloak_server_url": keycloak_server.url,
            "ckanext.mltokens.keycloak_realm": keycloak_realm,
            "ckanext.mltokens.keycloak_admin_client_secret": admin_secret(admin, settings),
        }
    )
    return admin


@pytest.fixture
def ada(keycloak: KeycloakAdmin) -> dict[str, Any]:
    """A CKAN user with a Keycloak account of the same name that holds one model role."""
    user = factories.User(password=PASSWORD)
    user_id = keycloak.create_user({"username": user["name"], "enabled": True})
    keycloak.assign_realm_roles(user_id, [keycloak.get_realm_role(PREDICT)])
    return user


def fetch_token(client_id: str, secret: str) -> requests.Response:
    return requests.post(
        tk.h.mltokens_token_endpoint(),
        timeout=10,
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )


def test_roles_come_from_keycloak_and_bound_what_may_be_granted(act: Callable[..., Any], ada: dict) -> None:
    assert act("mltoken_roles_list", ada["name"]) == [PREDICT]
    with pytest.raises(tk.ValidationError) as err:
        act("mltoken_create", ada["name"], name="n", roles=["model:vision:predict"])
    assert err.value.error_dict == {
        "roles": ["You may not grant: model:vision:predict."],
        "__code": "roles_not_allowed",
    }
    with pytest.raises(tk.ValidationError):
        act("mltoken_create", factories.User()["name"], name="n", roles=[PREDICT])


def test_access_token_minted_by_keycloak(act: Callable[..., Any], ada: dict) -> None:
    created = act("mltoken_create", ada["name"], name="notebook", roles=[PREDICT], ttl="1d")
    assert created["token"].startswith("mlt_eyJ")  # a JWT minted by Keycloak, handed out with the prefix
    claims = jwt.decode(created["token"].removeprefix("mlt_"), options={"verify_signature": False})
    assert claims["token_id"] == created["id"] and created["issuer"] == "keycloak"
    assert created["client_id"] and created["kind"] == "access_token"


def test_client_credentials_token_fetches_tokens_until_revoked(act: Callable[..., Any], ada: dict) -> None:
    created = act("mltoken_create", ada["name"], name="pipeline", roles=[PREDICT], kind="client_credentials")
    assert created["kind"] == "client_credentials" and created["token"].count(".") != 2
    assert not created["token"].startswith("mlt_")  # Keycloak's client secret, as Keycloak made it
    fetched = fetch_token(created["client_id"], created["token"])
    assert fetched.status_code == 200, fetched.text
    assert jwt.decode(fetched.json()["access_token"], options={"verify_signature": False})["token_id"] == created["id"]

    act("mltoken_revoke", ada["name"], id=created["id"])
    assert fetch_token(created["client_id"], created["token"]).status_code in (400, 401)


def test_page_offers_the_kinds_and_shows_client_id_secret_and_token_endpoint(app: Any, ada: dict) -> None:
    visitor = Visitor(app).login(ada)
    url = f"/user/{ada['name']}/ml-tokens"
    form = visitor.get(url)
    assert 'name="kind"' in form.body and 'value="client_credentials"' in form.body
    page = visitor.post(url, {"name": "pipeline", "kind": "client_credentials", "roles": [PREDICT]}, csrf_from=url)
    client_id = re.search(r'id="mltoken-client-id">([^<]+)<', page.body).group(1)
    secret = re.search(r'id="mltoken-secret"[^>]*value="([^"]+)"', page.body).group(1)
    assert f"client_id={client_id} -d client_secret={secret} {tk.h.mltokens_token_endpoint()}" in page.body
    assert fetch_token(client_id, secret).status_code == 200
