"""The plugin on the Keycloak issuer (the Keycloak-compatible test server): roles from Keycloak,
access tokens and client-credentials tokens through the actions and the page, and the examples
the page shows with a client-credentials token, run as a user would run them."""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import ckan.plugins.toolkit as tk
import jwt
import pytest
import requests
from ckan.tests import factories
from ckanext.mltokens import service
from keycloak import KeycloakAdmin
from werkzeug.serving import make_server

from testing.keycloak_server.fixtures import KeycloakServerInfo, keycloak_realm, keycloak_server  # noqa: F401
from tests.support import wsgi_echo
from token_service.issuers.keycloak_bootstrap import admin_secret, bootstrap
from token_service.verify import verify

from .conftest import PASSWORD, Visitor, roles_of, secret_in

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
            # test.ini names the local issuer's URL; on Keycloak the `iss` is the realm's URL
            "ckanext.mltokens.issuer_url": f"{keycloak_server.url}/realms/{keycloak_realm}",
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
    assert roles_of(act("mltoken_roles_list", ada["name"])) == [PREDICT]
    with pytest.raises(tk.ValidationError) as err:
        act("mltoken_create", ada["name"], name="n", roles=["model:vision:predict"])
    assert err.value.error_dict == {
        "roles": ["You may not grant: model:vision:predict."],
        "__code": "roles_not_allowed",
    }
    with pytest.raises(tk.NotAuthorized, match="has no account in Keycloak"):  # no Keycloak account
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


def shown(page: Any, element_id: str) -> str:
    """The text of a <pre> or <code> of the page, as the browser shows it."""
    return html.unescape(re.search(rf'id="{element_id}"[^>]*>([^<]*)<', page.body).group(1))


@pytest.fixture
def model_api(ckan_config: Any) -> Iterator[str]:
    """A stand-in for the model API that echoes the request's headers; CKAN's examples point at it."""
    server = make_server("127.0.0.1", 0, wsgi_echo.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/v1/models/sentiment/predict"
    ckan_config["ckanext.mltokens.model_api_url"] = url
    yield url
    server.shutdown()
    thread.join(timeout=10)


def create_on_the_page(app: Any, user: dict[str, Any]) -> tuple[Any, str, str]:
    """Create a client-credentials token through the page: (the page, client id, secret)."""
    visitor = Visitor(app).login(user)
    url = f"/user/{user['name']}/ml-tokens"
    form = visitor.get(url)
    assert 'name="kind"' in form.body and 'value="client_credentials"' in form.body
    page = visitor.post(url, {"name": "pipeline", "kind": "client_credentials", "roles": [PREDICT]}, csrf_from=url)
    return page, shown(page, "mltoken-client-id"), secret_in(page)


def bearer_of(echoed: str) -> str:
    """The JWT the model API received, from the echo of its request headers."""
    return json.loads(echoed[echoed.index("{") :])["HTTP_AUTHORIZATION"].removeprefix("Bearer ")


def run_shell_example(commands: str, secret: str) -> str:
    """The shell example as a user runs it: the secret typed at its `read`, curl and python3 on PATH."""
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", commands],
        input=secret + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_python_example(code: str, secret: str) -> str:
    env = {**os.environ, "ML_CLIENT_SECRET": secret}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def valid(jwt_: str) -> Any:
    """The product's own check of a JWT (`mltokens check`): signature by Keycloak's keys, claims, store."""
    lifecycle = service.lifecycle()
    return verify(
        jwt_, service.settings(), lifecycle.issuer.jwks(), lifecycle.store, issuer_url=lifecycle.issuer.issuer_url
    )


def test_the_box_of_a_client_credentials_token_shows_examples_that_work(
    app: Any, ada: dict, model_api: str, act: Callable[..., Any]
) -> None:
    """issue 13: the box showed only a fetch curl with the secret on its command line."""
    page, client_id, secret = create_on_the_page(app, ada)
    commands, program = shown(page, "mltoken-curl"), shown(page, "mltoken-python")
    assert secret not in commands and secret not in program  # shown once, in the secret's own field
    assert tk.h.mltokens_token_endpoint() in commands and model_api in commands and client_id in program
    assert "Authorization: Bearer $JWT" in commands and "OAuth2Session" in program
    lifespan = shown(page, "mltoken-cc-lifespan")
    assert "Each access token lives 15 minutes, and never past this token's expiry" in lifespan

    by_shell = bearer_of(run_shell_example(commands, secret))
    # The Python example as shown, then one more call once its access token has run out: the
    # session fetches a new one by itself, as the box says.
    ran_out = f"\nsession.token['expires_at'] = 1\nprint(session.post({model_api!r}, json={{}}).text)"
    first, second = run_python_example(program + ran_out, secret).splitlines()
    by_python, refetched = bearer_of(first), bearer_of(second)
    assert first.startswith("200 ") and len({by_shell, by_python, refetched}) == 3  # three fetches, three JWTs
    for fetched in (by_shell, by_python, refetched):
        verdict = valid(fetched)
        assert verdict.valid, verdict.reason
        assert jwt.decode(fetched, options={"verify_signature": False})["azp"] == client_id

    token_id = act("mltoken_list", ada["name"])[0]["id"]
    act("mltoken_revoke", ada["name"], id=token_id)
    assert not valid(by_python).valid and fetch_token(client_id, secret).status_code in (400, 401)


@pytest.mark.ckan_config(
    "ckanext.mltokens.public_token_endpoint", "https://sso.example.org/realms/ml/protocol/openid-connect/token?a='<b>"
)
def test_the_box_shows_the_public_token_endpoint_quoted_for_each_sink(app: Any, ada: dict) -> None:
    page, _client_id, _secret = create_on_the_page(app, ada)
    public = "https://sso.example.org/realms/ml/protocol/openid-connect/token?a='<b>"
    assert "<b>" not in page.body and "&lt;b&gt;" in page.body
    assert shlex.quote(public) in shown(page, "mltoken-curl") and repr(public) in shown(page, "mltoken-python")
    assert public in shown(page, "mltoken-cc-how")
    back_channel = service.settings().keycloak_server_url
    assert back_channel not in page.body.split('id="mltoken-created"')[1].split("</div>")[0]


def test_the_page_explains_both_kinds_and_lists_kind_and_client_id(app: Any, ada: dict, act: Callable) -> None:
    access = act("mltoken_create", ada["name"], name="notebook", roles=[PREDICT], ttl="1d")
    pipeline = act("mltoken_create", ada["name"], name="pipeline", roles=[PREDICT], kind="client_credentials")
    page = Visitor(app).login(ada).get(f"/user/{ada['name']}/ml-tokens")
    assert "never sent to the model API" in shown(page, "mltokens-help-client-credentials")
    for token, kind in ((access, "access token"), (pipeline, "client credentials")):
        row = page.body.split(f'id="mltoken-{token["id"]}"')[1].split("</tr>")[0]
        cell = re.search(r'class="mltoken-kind">(.*?)</td>', row, re.S).group(1)
        assert kind in cell and f'<code class="mltoken-client-id">{token["client_id"]}</code>' in cell


@pytest.mark.parametrize("enabled", [False, None], ids=["disabled", "no-account"])
def test_a_user_without_a_usable_keycloak_account_is_told_why(
    app: Any, keycloak: KeycloakAdmin, act: Callable[..., Any], enabled: bool | None
) -> None:
    """issue 13: such a user saw "You have no roles you could grant" and no hint why."""
    user = factories.User(password=PASSWORD)
    if enabled is not None:
        user_id = keycloak.create_user({"username": user["name"], "enabled": enabled})
        keycloak.assign_realm_roles(user_id, [keycloak.get_realm_role(PREDICT)])
    why = "is disabled" if enabled is False else "has no account in Keycloak"
    page = Visitor(app).login(user).get(f"/user/{user['name']}/ml-tokens")
    problem = shown(page, "mltokens-roles-problem")
    assert why in problem and user["name"] in problem and "Ask the operators of this site" in problem
    assert "You have no roles you could grant" not in page.body
    for action, data in (("mltoken_roles_list", {}), ("mltoken_create", {"name": "n", "roles": [PREDICT]})):
        with pytest.raises(tk.NotAuthorized, match=why):
            act(action, user["name"], **data)
