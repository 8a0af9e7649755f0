"""Inputs that once answered with a traceback (a 500 over HTTP), each pinned: through the
action API, over HTTP with an API token, and through the token page's form."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ckan.plugins.toolkit as tk
import pytest
from ckan.tests import factories
from ckanext.mltokens import service

from tests.ckan.test_actions import field_errors
from tests.ckan.test_schema_properties import snapshot
from tests.ckan.test_views import PASSWORD, Visitor, page_url

pytestmark = [pytest.mark.ckan, pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens")]

PREDICT = "model:sentiment:predict"
Act = Callable[..., Any]


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"ttl": 10**30}, "ttl", "The lifetime is longer than this site allows."),
        ({"ttl": "1000000000d"}, "ttl", "The lifetime is longer than this site allows."),
        ({"kind": []}, "kind", "Must be a Unicode string value"),
        ({"kind": {"a": 1}}, "kind", "Must be a Unicode string value"),
        ({"name": "invoice\u202efdp.exe"}, "name", "The name may not contain control characters."),
        ({"name": ["n"]}, "name", "Must be a Unicode string value"),
        ({"name": True}, "name", "Must be a Unicode string value"),
        ({"rate_limit": True}, "rate_limit", "The rate limit must be a number of requests per second."),
        ({"expires": 20300101}, "expires", "Give the expiry as a date (YYYY-MM-DD) or an ISO 8601 date-time."),
        # Lists that start with an object: CKAN 2.11's navl flattened them whatever the schema
        # (a DataError, or the field silently dropped); see ckanext.mltokens.compat.
        ({"roles": [{}, ""]}, "roles", "Give the roles as a list of role names."),
        ({"roles": [{"a": PREDICT}]}, "roles", "Give the roles as a list of role names."),
        ({"name": [{"a": "n"}]}, "name", "Must be a Unicode string value"),
        ({"rate_limit": [{}]}, "rate_limit", "The rate limit must be a number of requests per second."),
    ],
)
def test_create(act: Act, user: dict, data: dict, field: str, message: str) -> None:
    before = snapshot()
    with pytest.raises(tk.ValidationError) as err:
        act("mltoken_create", user["name"], **{"name": "n", "roles": [PREDICT], "ttl": "1d"} | data)
    assert field_errors(err.value) == {field: [message]}
    assert snapshot() == before


@pytest.mark.parametrize("ttl", [10**30, "1000000000d", 0])
def test_renew(act: Act, user: dict, token_of: Callable, ttl: Any) -> None:
    token = token_of(user)
    before = snapshot()
    with pytest.raises(tk.ValidationError) as err:
        act("mltoken_renew", user["name"], id=token["id"], ttl=ttl)
    assert list(field_errors(err.value)) == ["ttl"]
    assert snapshot() == before


@pytest.mark.parametrize("action", ["mltoken_list", "mltoken_revoke_all"])
@pytest.mark.parametrize("value", [["a", "b"], {"a": 1}, 42, "na\x00me", "x" * 129])
def test_a_malformed_user(act: Act, user: dict, sysadmin: dict, token_of: Callable, action: str, value: Any) -> None:
    """psycopg2 errors in the auth function (a user) and in the action (a sysadmin) before."""
    token_of(user)
    before = snapshot()
    with pytest.raises(tk.NotAuthorized):
        act(action, user["name"], user=value)
    with pytest.raises(tk.ValidationError) as err:
        act(action, sysadmin["name"], user=value)
    assert list(field_errors(err.value)) == ["user"]
    assert snapshot() == before


@pytest.mark.parametrize("value", ["maybe", [], {"a": 1}, 2, "\x00"])
def test_all_users_that_is_not_a_boolean(act: Act, user: dict, sysadmin: dict, value: Any) -> None:
    """tk.asbool raised in the auth function; a user may not ask, a sysadmin is told it is no boolean."""
    with pytest.raises(tk.NotAuthorized):
        act("mltoken_list", user["name"], all_users=value)
    with pytest.raises(tk.ValidationError) as err:
        act("mltoken_list", sysadmin["name"], all_users=value)
    assert field_errors(err.value) == {"all_users": ["Give true or false."]}


def test_all_users_empty_means_no(act: Act, user: dict, token_of: Callable) -> None:
    mine = token_of(user)
    assert [t["id"] for t in act("mltoken_list", user["name"], all_users="")] == [mine["id"]]
    with pytest.raises(tk.ValidationError):
        act("mltoken_list", user["name"], include_inactive="perhaps")


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("leaked\x00", "The reason may not contain control characters."),
        ("\u202edekael", "The reason may not contain control characters."),
        ("zero\u200bwidth", "The reason may not contain control characters."),
        (["leaked"], "Must be a Unicode string value"),
    ],
)
def test_a_bad_reason(act: Act, user: dict, token_of: Callable, reason: Any, message: str) -> None:
    """A NUL reached jsonb and came back as "the token store could not complete the change"."""
    token = token_of(user)
    before = snapshot()
    for action, data in (("mltoken_revoke", {"id": token["id"]}), ("mltoken_revoke_all", {})):
        with pytest.raises(tk.ValidationError) as err:
            act(action, user["name"], reason=reason, **data)
        assert field_errors(err.value) == {"reason": [message]}
    assert snapshot() == before


@pytest.mark.parametrize("value", [["x"], {"id": "x"}, "na\x00me"])
def test_user_delete_with_a_malformed_id(act: Act, sysadmin: dict, value: Any) -> None:
    before = snapshot()
    with pytest.raises(tk.ValidationError):
        act("user_delete", sysadmin["name"], id=value)
    assert snapshot() == before


def test_over_http_bad_input_is_a_409_with_the_field_error(app: Any) -> None:
    """The action API as a client sees it: CKAN's 409 with the field error and its code, never a 500."""
    user = factories.User()
    headers = {"Authorization": factories.APIToken(user=user["name"])["token"]}
    for action, body, field, code in [
        ("mltoken_create", {"name": "n", "roles": [PREDICT], "ttl": 10**30}, "ttl", "invalid"),
        ("mltoken_create", {"name": "n", "roles": [PREDICT], "kind": []}, "kind", "invalid"),
        ("mltoken_create", {"name": "n", "roles": [PREDICT], "ttl": "91d"}, "ttl", "ttl_too_long"),
        ("mltoken_create", {"name": "n", "roles": ["admin"]}, "roles", "roles_not_allowed"),
        ("mltoken_revoke_all", {"reason": "\x00"}, "reason", "invalid"),
    ]:
        response = app.post(f"/api/3/action/{action}", json=body, headers=headers)
        assert response.status_code == 409, response.body
        error = response.json["error"]
        assert field in error and (error["__type"], error["__code"]) == ("Validation Error", code), error
    listed = app.post("/api/3/action/mltoken_list", json={"user": "\x00"}, headers=headers)
    assert listed.status_code == 403 and listed.json["success"] is False
    assert service.lifecycle().list(service.Actor.operator()) == []


def test_pages_with_a_malformed_user_in_the_address(app: Any) -> None:
    """A sysadmin's /user/a%00b/ml-tokens reached CKAN's user lookup with the NUL: a 500."""
    root = Visitor(app).login(factories.Sysadmin(password=PASSWORD))
    for url in ("/user/a%00b/ml-tokens", f"/user/{'x' * 300}/ml-tokens"):
        root.get(url, status=404)
    for url in ("/ckan-admin/ml-tokens?user=a%00b", "/ckan-admin/ml-tokens/revoke-all?user=a%00b"):
        assert root.app.get(url).status_code < 500


def test_the_form_with_a_huge_lifetime_shows_the_error(app: Any) -> None:
    """The page's expiry field posted with 1000000000d: the form again with the message."""
    ann = factories.User(password=PASSWORD)
    visitor, url = Visitor(app).login(ann), page_url(ann)
    page = visitor.post(url, {"name": "n", "roles": [PREDICT], "expiry": "1000000000d"}, csrf_from=url)
    assert "The lifetime is longer than this site allows." in page.body
    assert 'id="mltoken-secret"' not in page.body
    assert service.lifecycle().list(service.Actor.operator()) == []
