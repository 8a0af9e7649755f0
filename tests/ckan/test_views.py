"""The web pages through CKAN's Flask app: logged in with the real login form, CSRF on."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import ckan.model as model
import pytest
from ckan.tests import factories
from ckanext.mltokens import service, views

from .conftest import PASSWORD, PREDICT, Visitor, page_url, secret_in

pytestmark = pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens")


def test_tab_on_the_users_page_beside_ckans_api_tokens(visit: Callable, people: dict) -> None:
    ann = visit(people["ann"])
    page = ann.get(f"/user/{people['ann']['name']}")
    tabs = re.findall(r'<a href="(/user/[^"]+)"', page.body)
    name = people["ann"]["name"]
    assert tabs.index(f"/user/{name}/ml-tokens") == tabs.index(f"/user/{name}/api-tokens") + 1
    assert "ML API tokens" not in ann.get(f"/user/{people['bob']['name']}").body
    assert "ML API tokens" in visit(people["root"]).get(f"/user/{people['bob']['name']}").body


def test_create_with_limits_and_their_errors(visit: Callable, people: dict) -> None:
    ann, url = visit(people["ann"]), page_url(people["ann"])
    page = ann.post(url, {"name": "capped", "roles": [PREDICT], "rate_limit": "99", "daily_quota": ""}, csrf_from=url)
    assert "at most 50 requests per second" in page.body and 'value="99"' in page.body
    page = ann.post(
        url, {"name": "capped", "roles": [PREDICT], "rate_limit": "5", "daily_quota": "10000"}, csrf_from=url
    )
    assert secret_in(page)
    assert "5 req/s, 10000 req/day" in page.body


def test_create_with_a_date_and_form_errors_are_flashed_and_kept(visit: Callable, people: dict) -> None:
    ann, url = visit(people["ann"]), page_url(people["ann"])
    page = ann.post(url, {"name": "no roles", "expiry": "604800"}, csrf_from=url)
    assert "Choose at least one role." in page.body and 'value="no roles"' in page.body
    page = ann.post(
        url, {"name": "far", "expiry": "date", "expires_on": "2999-01-01", "roles": [PREDICT]}, csrf_from=url
    )
    assert "The lifetime may be at most 90 days." in page.body
    assert service.lifecycle().list(service.actor_of(model.User.get(people["ann"]["id"]))) == []
    bounds = re.search(r'max="(\d{4}-\d{2}-\d{2})"', ann.get(url).body).group(1)
    page = ann.post(url, {"name": "dated", "expiry": "date", "expires_on": bounds, "roles": [PREDICT]}, csrf_from=url)
    assert secret_in(page)


def test_post_without_csrf_token_is_refused(visit: Callable, people: dict) -> None:
    ann, url = visit(people["ann"]), page_url(people["ann"])
    page = ann.post(url, {"name": "forged", "roles": [PREDICT]}, status=400)
    assert "CSRF" in page.body
    assert service.lifecycle().list(service.actor_of(model.User.get(people["ann"]["id"]))) == []


def test_csrf_still_checked_after_an_api_token_request_reached_the_view(
    app: Any, visit: Callable, people: dict
) -> None:
    """CKAN exempts a view from CSRF for good once an API-token request reaches it; we keep checking."""
    api_token = factories.APIToken(user=people["bob"]["name"])["token"]
    app.post(
        page_url(people["bob"]),
        data={"name": "via api", "roles": [PREDICT]},
        headers={"Authorization": api_token},
        status=200,
    )
    ann, url = visit(people["ann"]), page_url(people["ann"])
    ann.post(url, {"name": "forged", "roles": [PREDICT]}, status=400)
    assert service.lifecycle().list(service.actor_of(model.User.get(people["ann"]["id"]))) == []


def test_revoke_asks_for_confirmation_then_revokes(visit: Callable, people: dict, token_of: Callable) -> None:
    token = token_of(people["ann"], name="leaky")
    ann, url = visit(people["ann"]), page_url(people["ann"])
    listing = ann.get(url)
    assert 'data-module="mltokens-confirm"' in listing.body and f"{url}/{token['id']}/revoke" in listing.body
    confirm = ann.get(f"{url}/{token['id']}/revoke")
    assert 'Revoke the token "leaky"' in confirm.body and 'name="_csrf_token"' in confirm.body
    assert service.lifecycle().show(token["id"], service.Actor.operator()).status == "active"

    done = ann.app.post(
        f"{url}/{token['id']}/revoke",
        data={"reason": "leaked", "_csrf_token": ann.csrf(confirm)},
        follow_redirects=True,
    )
    assert "Token &#34;leaky&#34; revoked." in done.body
    shown = service.lifecycle().show(token["id"], service.Actor.operator())
    assert (shown.status, shown.revoke_reason) == ("revoked", "leaked")


def test_other_users_are_turned_away_and_tokens_are_not_found(
    app: Any, visit: Callable, people: dict, token_of: Callable
) -> None:
    token = token_of(people["ann"])
    bob = visit(people["bob"])
    bob.get(page_url(people["ann"]), status=403)
    bob.post(page_url(people["ann"]), {"name": "x", "roles": [PREDICT]}, status=403, csrf_from=page_url(people["bob"]))
    gone = bob.app.post(
        f"{page_url(people['bob'])}/{token['id']}/revoke",
        data={"_csrf_token": bob.csrf(bob.get(page_url(people["bob"])))},
        follow_redirects=True,
    )
    assert "Token not found." in gone.body
    assert service.lifecycle().show(token["id"], service.Actor.operator()).status == "active"
    app.get(page_url(people["ann"]), status=403)


def test_sysadmin_page_lists_filters_revokes_one_and_all(visit: Callable, people: dict, token_of: Callable) -> None:
    a1 = token_of(people["ann"], name="ann-one")
    token_of(people["ann"], name="ann-two")
    b1 = token_of(people["bob"], name="bob-one")
    visit(people["ann"]).get("/ckan-admin/ml-tokens", status=403)

    root = visit(people["root"])
    everything = root.get("/ckan-admin/ml-tokens").body
    assert all(name in everything for name in ("ann-one", "ann-two", "bob-one"))
    only_ann = root.get(f"/ckan-admin/ml-tokens?user={people['ann']['name']}").body
    assert "ann-one" in only_ann and "bob-one" not in only_ann and "Revoke all of" in only_ann

    done = root.app.post(
        f"/ckan-admin/ml-tokens/{b1['id']}/revoke",
        data={"_csrf_token": root.csrf(root.get(f"/ckan-admin/ml-tokens/{b1['id']}/revoke"))},
        follow_redirects=True,
    )
    assert "Token &#34;bob-one&#34; revoked." in done.body
    confirm = root.get(f"/ckan-admin/ml-tokens/revoke-all?user={people['ann']['name']}")
    done = root.app.post(
        "/ckan-admin/ml-tokens/revoke-all",
        data={"user": people["ann"]["name"], "_csrf_token": root.csrf(confirm)},
        follow_redirects=True,
    )
    assert f"2 tokens of {people['ann']['name']} revoked." in done.body
    statuses = {t.name: t.status for t in service.lifecycle().list(service.Actor.operator())}
    assert statuses == {"ann-one": "revoked", "ann-two": "revoked", "bob-one": "revoked"}
    assert a1["id"] in root.get("/ckan-admin/ml-tokens").body
    unknown = root.get("/ckan-admin/ml-tokens?user=nobody-at-all").body
    assert "User not found." in unknown


def test_the_administration_pages_turn_others_away_before_looking_anybody_up(
    app: Any, visit: Callable, people: dict, token_of: Callable
) -> None:
    """Not a way to learn a user's name from their id, nor to reach one's own token by an admin address."""
    own = token_of(people["ann"])
    ann = visit(people["ann"])
    for address in (
        f"/ckan-admin/ml-tokens/revoke-all?user={people['bob']['id']}",
        f"/ckan-admin/ml-tokens/revoke-all?user={people['ann']['id']}",
        f"/ckan-admin/ml-tokens/{own['id']}/revoke",
    ):
        page = ann.get(address, status=403)
        assert people["bob"]["name"] not in page.body
        assert app.get(address).status_code == 403


def test_names_are_escaped_everywhere(visit: Callable, people: dict, token_of: Callable) -> None:
    evil = '<img src=x onerror="alert(1)">'
    token = token_of(people["ann"], name=evil)
    ann, url = visit(people["ann"]), page_url(people["ann"])
    pages = [ann.get(url), ann.get(f"{url}/{token['id']}/revoke"), visit(people["root"]).get("/ckan-admin/ml-tokens")]
    for page in pages:
        assert evil not in page.body and "&lt;img src=x" in page.body


def test_ml_tokens_shortcut_goes_to_the_callers_tab_or_to_login(app: Any, visit: Callable, people: dict) -> None:
    anonymous = app.get("/ml-tokens", follow_redirects=False)
    assert anonymous.status_code == 302 and "/user/login?next=/ml-tokens" in anonymous.headers["Location"]
    ann = visit(people["ann"]).app.get("/ml-tokens", follow_redirects=False)
    assert ann.headers["Location"].endswith(page_url(people["ann"]))


@pytest.mark.ckan_config("ckan.auth.route_after_login", "mltokens.mine")
def test_login_can_land_on_the_token_tab(app: Any, people: dict) -> None:
    visitor = Visitor(app)
    page = visitor.app.get("/user/login")
    landed = visitor.app.post(
        "/user/login",
        data={"login": people["bob"]["name"], "password": PASSWORD, "_csrf_token": visitor.csrf(page)},
        follow_redirects=True,
    )
    assert landed.request.path == page_url(people["bob"]) and "Create a token" in landed.body


@pytest.mark.ckan_config("ckanext.mltokens.key_passphrase", "not-the-passphrase")
def test_a_service_failure_is_a_generic_message_never_a_secret(app: Any, visit: Callable, people: dict) -> None:
    """The signing key cannot be decrypted: the page says so generically; the API gives CKAN's 500."""
    ann, url = visit(people["ann"]), page_url(people["ann"])
    page = ann.post(url, {"name": "n", "roles": [PREDICT]}, csrf_from=url)
    assert "The token service could not complete the request; nothing was changed." in page.body
    assert "passphrase" not in page.body and 'id="mltoken-secret"' not in page.body
    api_token = factories.APIToken(user=people["bob"]["name"])["token"]
    response = app.post(
        "/api/3/action/mltoken_create", json={"name": "n", "roles": [PREDICT]}, headers={"Authorization": api_token}
    )
    assert response.status_code == 500 and "passphrase" not in response.body
    assert service.lifecycle().list(service.Actor.operator()) == []


def test_the_page_still_shows_the_tokens_when_the_issuer_is_down(
    visit: Callable, people: dict, token_of: Callable, ckan_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    token = token_of(people["ann"], name="made earlier")
    ckan_config.update(
        {  # the store is up; the (Keycloak) issuer is unreachable
            "ckanext.mltokens.issuer": "keycloak",
            "ckanext.mltokens.keycloak_server_url": "http://127.0.0.1:9",
            "ckanext.mltokens.keycloak_admin_client_secret": "unused",
            "ckanext.mltokens.keycloak_timeout": "1s",
        }
    )
    with caplog.at_level(logging.ERROR):
        page = visit(people["ann"]).get(page_url(people["ann"]))
    assert "made earlier" in page.body and token["id"] in page.body
    assert 'name="roles"' not in page.body
    # issue 13: "the service is down", not "you have no roles"; what failed is in the log only
    problem = re.search(r'id="mltokens-roles-problem">([^<]*)<', page.body).group(1)
    assert problem == views.ROLES_UNAVAILABLE and "Please try again later." in problem
    assert "You have no roles you could grant" not in page.body and "127.0.0.1:9" not in page.body
    assert "Keycloak failed to read your roles: Can't connect to server" in caplog.text
