"""CSRF for the plugin's writing actions over the action API, with a real cookie session.

CKAN 2.12 exempts the action API from CSRF checks for the rest of the process once an
anonymous API request has been served; the plugin's writing actions check for themselves
(`ckanext.mltokens.csrf`) and refuse with 403. CKAN 2.11 exempts only the request itself,
so its own check refuses such a request first, with its 400 page: either way it is refused
for its CSRF token and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from ckan.tests import factories
from ckanext.mltokens import service

from .conftest import PREDICT, Visitor, page_url

pytestmark = pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens")


def statuses() -> dict[str, str]:
    return {t.name: t.status for t in service.lifecycle().list(service.Actor.operator())}


@pytest.fixture
def ann(visit: Callable, people: dict) -> Visitor:
    return visit(people["ann"])


def refused_for_csrf(response: Any) -> None:
    """Refused by the plugin (403, CKAN 2.12) or by CKAN's CSRFProtect before it (400, CKAN 2.11)."""
    assert response.status_code in (400, 403) and "CSRF token" in response.body, response.body


def anonymous_api_request(app: Any) -> None:
    """What any visitor's JavaScript or a monitoring probe does; CKAN then exempts `api.action` from CSRF."""
    assert app.get("/api/3/action/status_show").json["success"]


WRITES = [
    ("mltoken_create", lambda token: {"name": "forged", "roles": [PREDICT]}),
    ("mltoken_renew", lambda token: {"id": token["id"]}),
    ("mltoken_rotate", lambda token: {"id": token["id"]}),
    ("mltoken_revoke", lambda token: {"id": token["id"]}),
    ("mltoken_revoke_all", lambda token: {}),
]


@pytest.mark.parametrize(("action", "data"), WRITES, ids=[w[0] for w in WRITES])
def test_cookie_session_without_csrf_token_is_refused_after_an_anonymous_api_request(
    app: Any, ann: Visitor, people: dict, token_of: Callable, action: str, data: Callable
) -> None:
    token = token_of(people["ann"], name="mine")
    anonymous_api_request(app)
    refused_for_csrf(ann.app.post(f"/api/3/action/{action}", json=data(token)))
    refused_for_csrf(ann.app.post(f"/api/3/action/{action}", json=data(token), headers={"X-CSRFToken": "forged"}))
    assert statuses() == {"mine": "active"}
    assert service.lifecycle().show(token["id"], service.Actor.operator()).renew_count == 0


def test_cookie_session_with_the_pages_csrf_token_works(app: Any, ann: Visitor, people: dict) -> None:
    """CKAN's own JavaScript client sends the page's token in X-CSRFToken: that keeps working."""
    anonymous_api_request(app)
    csrf_token = ann.csrf(ann.get(page_url(people["ann"])))
    created = ann.app.post(
        "/api/3/action/mltoken_create", json={"name": "by js", "roles": [PREDICT]}, headers={"X-CSRFToken": csrf_token}
    ).json["result"]
    renewed = ann.app.post(
        "/api/3/action/mltoken_renew", json={"id": created["id"]}, headers={"X-CSRFToken": csrf_token}
    ).json["result"]
    assert renewed["token"] != created["token"]
    ann.app.post("/api/3/action/mltoken_revoke_all", json={}, headers={"X-CSRFToken": csrf_token})
    assert statuses() == {"by js": "revoked"}


def test_api_token_requests_need_no_csrf_token(app: Any, people: dict) -> None:
    anonymous_api_request(app)
    headers = {"Authorization": factories.APIToken(user=people["bob"]["name"])["token"]}
    created = app.post(
        "/api/3/action/mltoken_create", json={"name": "script", "roles": [PREDICT]}, headers=headers
    ).json["result"]
    app.post("/api/3/action/mltoken_renew", json={"id": created["id"]}, headers=headers)
    app.post("/api/3/action/mltoken_revoke", json={"id": created["id"]}, headers=headers)
    assert statuses() == {"script": "revoked"}


def test_user_delete_by_a_cookie_session_without_csrf_token_keeps_the_tokens(
    app: Any, visit: Callable, people: dict, token_of: Callable
) -> None:
    """`user_delete` is chained by the plugin (it revokes the user's tokens): it is checked too."""
    token_of(people["ann"], name="mine")
    anonymous_api_request(app)
    root = visit(people["root"])
    refused_for_csrf(root.app.post("/api/3/action/user_delete", json={"id": people["ann"]["name"]}))
    assert statuses() == {"mine": "active"}
