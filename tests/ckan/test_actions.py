"""The mltoken_* actions against real CKAN, PostgreSQL and the local issuer: success, errors, auth."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import ckan.model as model
import ckan.plugins.toolkit as tk
import pytest
from ckan.tests import factories
from ckanext.mltokens import service

from .conftest import claims, roles_of

pytestmark = [pytest.mark.ckan, pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens")]

Act = Callable[..., Any]
PREDICT = "model:sentiment:predict"
# The codes a ValidationError of the actions may name (token_service/errors.py).
CODES = {
    "invalid",
    "ttl_too_long",
    "roles_not_allowed",
    "too_many_tokens",
    "rate_limited",
    "not_active",
    "already_revoked",
}


def field_errors(error: tk.ValidationError) -> dict[str, Any]:
    """The field messages of an action's ValidationError, after checking it names a known code."""
    fields = dict(error.error_dict)
    assert fields.pop(service.CODE, None) in CODES, error.error_dict
    return fields


def revoked_jtis() -> set[str]:
    from token_service.store import Revocation

    with service.lifecycle().store.transaction() as s:
        return {r.jti for r in s.query(Revocation)}


class TestCreate:
    def test_returns_the_token_once_and_stores_only_metadata(self, act: Act, user: dict) -> None:
        created = act("mltoken_create", user["name"], name="notebook", roles=[PREDICT], ttl="7d")

        assert created["name"] == "notebook"
        assert created["owner_id"] == user["id"] and created["owner_name"] == user["name"]
        assert created["roles"] == [PREDICT] and created["status"] == "active"
        token = claims(created["token"])
        assert token["token_id"] == created["id"] and token["owner"] == user["id"] and token["roles"] == [PREDICT]
        assert token["exp"] - token["iat"] == 7 * 86400
        shown = act("mltoken_show", user["name"], id=created["id"])
        assert "token" not in shown and shown["id"] == created["id"]
        listed = act("mltoken_list", user["name"])
        assert created["token"] not in repr(listed)

    def test_roles_as_a_comma_separated_string_and_default_ttl(self, act: Act, user: dict) -> None:
        created = act("mltoken_create", user["name"], name="n", roles="model:sentiment:predict, model:vision:predict")
        assert created["roles"] == [PREDICT, "model:vision:predict"]
        expires = datetime.fromisoformat(created["expires_at"]) - datetime.fromisoformat(created["issued_at"])
        assert expires == timedelta(days=30)

    def test_expires_as_a_date_means_midnight_utc(self, act: Act, user: dict, monkeypatch: pytest.MonkeyPatch) -> None:
        """Exactly, even when a second ends between the request and the token's issue (the service's clock
        is a second ahead here)."""
        monkeypatch.setattr(service.lifecycle(), "clock", lambda: datetime.now(UTC) + timedelta(seconds=1))
        day = (datetime.now(UTC) + timedelta(days=10)).date()
        created = act("mltoken_create", user["name"], name="n", roles=[PREDICT], expires=day.isoformat())
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        assert datetime.fromisoformat(created["expires_at"]) == midnight
        assert claims(created["token"])["exp"] == midnight.timestamp()
        noon = f"{day + timedelta(days=1)}T12:00:00+02:00"
        renewed = act("mltoken_renew", user["name"], id=created["id"], expires=noon)
        assert datetime.fromisoformat(renewed["expires_at"]) == datetime.fromisoformat(noon)

    @pytest.mark.parametrize(
        ("data", "field", "message"),
        [
            ({"name": "", "roles": [PREDICT]}, "name", "Give the token a name."),
            ({"roles": [PREDICT]}, "name", "Missing value"),
            ({"name": "n", "roles": []}, "roles", "Choose at least one role."),
            ({"name": "n", "roles": [PREDICT, "admin"]}, "roles", "You may not grant: admin."),
            ({"name": "n", "roles": [1, 2]}, "roles", "Give the roles as a list of role names."),
            ({"name": "n", "roles": [PREDICT], "ttl": "91d"}, "ttl", "The lifetime may be at most 90 days."),
            (
                {"name": "n", "roles": [PREDICT], "ttl": "soon"},
                "ttl",
                "Give the lifetime as e.g. 30d, 12h or a number of seconds.",
            ),
            ({"name": "n", "roles": [PREDICT], "ttl": "10s"}, "ttl", "The lifetime must be at least one minute."),
            (
                {"name": "n", "roles": [PREDICT], "expires": "2020-01-01"},
                "expires",
                "The lifetime must be at least one minute.",
            ),
            (
                {"name": "n", "roles": [PREDICT], "expires": "2999-01-01"},
                "expires",
                "The lifetime may be at most 90 days.",
            ),
            (  # the latest moment a datetime holds, 14 hours behind UTC: in year 10000 there
                {"name": "n", "roles": [PREDICT], "expires": "9999-12-31T23:59:59.999999-14:00"},
                "expires",
                "The lifetime may be at most 90 days.",
            ),
            (  # and the earliest, 14 hours ahead: before year 1 there
                {"name": "n", "roles": [PREDICT], "expires": "0001-01-01T00:00:00+14:00"},
                "expires",
                "The lifetime must be at least one minute.",
            ),
            (
                {"name": "n", "roles": [PREDICT], "expires": "tomorrow"},
                "expires",
                "Give the expiry as a date (YYYY-MM-DD) or an ISO 8601 date-time.",
            ),
            (
                {"name": "n", "roles": [PREDICT], "ttl": "1d", "expires": "2999-01-01"},
                "expires",
                "Give either ttl or expires, not both.",
            ),
            ({"name": "x" * 201, "roles": [PREDICT]}, "name", "The name may be at most 200 characters."),
        ],
    )
    def test_bad_input_is_a_field_error(self, act: Act, user: dict, data: dict, field: str, message: str) -> None:
        with pytest.raises(tk.ValidationError) as err:
            act("mltoken_create", user["name"], **data)
        assert field_errors(err.value) == {field: [message]}
        assert act("mltoken_list", user["name"]) == []

    def test_own_limits_go_into_the_token(self, act: Act, user: dict) -> None:
        created = act("mltoken_create", user["name"], name="n", roles=[PREDICT], rate_limit="2.5", daily_quota=1000)
        assert (created["rate_limit"], created["daily_quota"]) == (2.5, 1000)
        assert claims(created["token"])["limits"] == {"rps": 2.5, "daily": 1000}
        plain = act("mltoken_create", user["name"], name="m", roles=[PREDICT])
        assert "limits" not in claims(plain["token"]) and plain["rate_limit"] is None

    @pytest.mark.parametrize(
        ("data", "field", "message"),
        [
            ({"rate_limit": "fast"}, "rate_limit", "The rate limit must be a number of requests per second."),
            ({"rate_limit": 51}, "rate_limit", "The rate limit must be above 0 and at most 50 requests per second."),
            ({"rate_limit": ""}, "rate_limit", "The rate limit must be a number of requests per second."),
            ({"daily_quota": 0}, "daily_quota", "The daily quota must be between 1 and 1000000 requests."),
            ({"daily_quota": "many"}, "daily_quota", "The daily quota must be a whole number of requests."),
            ({"kind": "client_credentials"}, "kind", "This site offers these token kinds: access_token."),
        ],
    )
    def test_bad_limits_or_kind(self, act: Act, user: dict, data: dict, field: str, message: str) -> None:
        with pytest.raises(tk.ValidationError) as err:
            act("mltoken_create", user["name"], name="n", roles=[PREDICT], **data)
        assert field_errors(err.value) == {field: [message]}

    def test_duplicate_active_name_and_the_per_user_limit(self, act: Act, user: dict, token_of: Callable) -> None:
        token_of(user, name="a")
        with pytest.raises(tk.ValidationError) as err:
            token_of(user, name="a")
        assert err.value.error_dict == {
            "name": ["You already have an active token with this name."],
            "__code": "invalid",
        }
        token_of(user, name="b")
        token_of(user, name="c")
        with pytest.raises(tk.ValidationError) as err:
            token_of(user, name="d")
        assert err.value.error_dict["name"][0].startswith("You already have 3 active tokens")
        assert err.value.error_dict["__code"] == "too_many_tokens"

    @pytest.mark.ckan_config("ckanext.mltokens.role_prefixes", "model:vision:")
    def test_role_prefixes_narrow_what_may_be_granted(self, act: Act, user: dict) -> None:
        assert roles_of(act("mltoken_roles_list", user["name"])) == ["model:vision:predict", "model:vision:train"]
        with pytest.raises(tk.ValidationError) as err:
            act("mltoken_create", user["name"], name="n", roles=[PREDICT])
        assert err.value.error_dict == {"roles": [f"You may not grant: {PREDICT}."], "__code": "roles_not_allowed"}
        assert act("mltoken_create", user["name"], name="n", roles=["model:vision:train"])["roles"] == [
            "model:vision:train"
        ]

    def test_anonymous_is_denied(self, act: Act) -> None:
        with pytest.raises(tk.NotAuthorized):
            act("mltoken_create", None, name="n", roles=[PREDICT])

    @pytest.mark.parametrize("state", [model.State.PENDING, model.State.DELETED])
    def test_an_inactive_user_cannot_create_or_renew(
        self, act: Act, user: dict, token_of: Callable, state: str
    ) -> None:
        token = token_of(user)
        row = model.User.get(user["id"])
        row.state = state
        model.Session.commit()
        with pytest.raises(tk.NotAuthorized):
            act("mltoken_create", user["name"], name="n2", roles=[PREDICT])
        with pytest.raises(tk.NotAuthorized):
            act("mltoken_renew", user["name"], id=token["id"])

    def test_an_inactive_sysadmin_cannot_create_either(self, act: Act) -> None:
        admin = factories.Sysadmin(state=model.State.PENDING)
        with pytest.raises(tk.NotAuthorized):
            act("mltoken_create", admin["name"], name="n", roles=[PREDICT])


class TestListAndShow:
    def test_own_tokens_with_inactive_optional(
        self, act: Act, user: dict, other_user: dict, token_of: Callable
    ) -> None:
        first = token_of(user, name="first")
        second = token_of(user, name="second")
        token_of(other_user, name="theirs")
        act("mltoken_revoke", user["name"], id=first["id"])

        assert sorted(t["name"] for t in act("mltoken_list", user["name"])) == ["first", "second"]
        assert [t["name"] for t in act("mltoken_list", user["name"], include_inactive=False)] == ["second"]
        assert {t["id"] for t in act("mltoken_list", user["name"], user=user["name"])} == {first["id"], second["id"]}

    def test_another_users_list_is_for_sysadmins_only(
        self, act: Act, user: dict, other_user: dict, sysadmin: dict, token_of: Callable
    ) -> None:
        token_of(other_user, name="theirs")
        token_of(user, name="mine")
        with pytest.raises(tk.NotAuthorized):
            act("mltoken_list", user["name"], user=other_user["name"])
        with pytest.raises(tk.NotAuthorized):
            act("mltoken_list", user["name"], all_users=True)
        with pytest.raises(tk.NotAuthorized):
            act("mltoken_list", user["name"], user="nobody-at-all")
        assert [t["name"] for t in act("mltoken_list", sysadmin["name"], user=other_user["id"])] == ["theirs"]
        assert {t["name"] for t in act("mltoken_list", sysadmin["name"], all_users=True)} == {"theirs", "mine"}
        assert act("mltoken_list", sysadmin["name"]) == []
        with pytest.raises(tk.ObjectNotFound):
            act("mltoken_list", sysadmin["name"], user="nobody-at-all")

    def test_show_is_for_the_owner_and_sysadmins_others_are_told_not_found(
        self, act: Act, user: dict, other_user: dict, sysadmin: dict, token_of: Callable
    ) -> None:
        token = token_of(user)
        assert act("mltoken_show", user["name"], id=token["id"])["name"] == "notebook"
        assert act("mltoken_show", sysadmin["name"], id=token["id"])["owner_name"] == user["name"]
        for bad in (token["id"], "00000000-0000-0000-0000-000000000000", "not-a-uuid"):
            with pytest.raises(tk.ObjectNotFound) as err:
                act("mltoken_show", other_user["name"], id=bad)
            assert str(err.value) == "Token not found."
        with pytest.raises(tk.ValidationError) as err:
            act("mltoken_show", user["name"])
        assert err.value.error_dict == {"id": ["Missing value"], "__code": "invalid"}

    @pytest.mark.parametrize("action", ["mltoken_list", "mltoken_show", "mltoken_roles_list"])
    def test_anonymous_is_denied(self, act: Act, action: str) -> None:
        with pytest.raises(tk.NotAuthorized):
            act(action, None, id="00000000-0000-0000-0000-000000000000")

    def test_roles_list_is_the_issuers_roles(self, act: Act, user: dict) -> None:
        assert roles_of(act("mltoken_roles_list", user["name"])) == [
            PREDICT,
            "model:sentiment:train",
            "model:vision:predict",
            "model:vision:train",
        ]


class TestRenew:
    def test_new_secret_new_jti_same_id_old_jti_revoked(self, act: Act, user: dict, token_of: Callable) -> None:
        token = token_of(user, ttl="1d")
        renewed = act("mltoken_renew", user["name"], id=token["id"], ttl="3d")

        assert renewed["id"] == token["id"] and renewed["renew_count"] == 1
        assert renewed["token"] != token["token"]
        old, new = claims(token["token"]), claims(renewed["token"])
        assert new["token_id"] == old["token_id"] and new["jti"] != old["jti"]
        assert new["exp"] - new["iat"] == 3 * 86400
        assert revoked_jtis() == {old["jti"]}

    def test_others_are_told_not_found_sysadmins_may(
        self, act: Act, user: dict, other_user: dict, sysadmin: dict, token_of: Callable
    ) -> None:
        token = token_of(user)
        with pytest.raises(tk.ObjectNotFound):
            act("mltoken_renew", other_user["name"], id=token["id"])
        assert act("mltoken_renew", sysadmin["name"], id=token["id"])["renew_count"] == 1
        with pytest.raises(tk.NotAuthorized):
            act("mltoken_renew", None, id=token["id"])

    def test_errors(self, act: Act, user: dict, token_of: Callable) -> None:
        token = token_of(user)
        with pytest.raises(tk.ValidationError) as err:
            act("mltoken_renew", user["name"], id=token["id"], ttl="1000d")
        assert err.value.error_dict == {"ttl": ["The lifetime may be at most 90 days."], "__code": "ttl_too_long"}
        act("mltoken_revoke", user["name"], id=token["id"])
        with pytest.raises(tk.ValidationError) as err:
            act("mltoken_renew", user["name"], id=token["id"])
        assert err.value.error_dict == {
            "id": ["A revoked token cannot be renewed; create a new one."],
            "__code": "not_active",
        }


class TestRevoke:
    def test_revoke_writes_a_revocation_and_changes_status(self, act: Act, user: dict, token_of: Callable) -> None:
        token = token_of(user)
        revoked = act("mltoken_revoke", user["name"], id=token["id"], reason="leaked in a notebook")
        assert revoked["status"] == "revoked" and revoked["revoke_reason"] == "leaked in a notebook"
        assert revoked["revoked_by"] == user["name"]
        assert revoked_jtis() == {claims(token["token"])["jti"]}
        with pytest.raises(tk.ValidationError) as err:
            act("mltoken_revoke", user["name"], id=token["id"])
        assert err.value.error_dict == {"id": ["This token is already revoked."], "__code": "already_revoked"}

    def test_others_are_told_not_found_sysadmins_may(
        self, act: Act, user: dict, other_user: dict, sysadmin: dict, token_of: Callable
    ) -> None:
        token = token_of(user)
        with pytest.raises(tk.ObjectNotFound):
            act("mltoken_revoke", other_user["name"], id=token["id"])
        with pytest.raises(tk.NotAuthorized):
            act("mltoken_revoke", None, id=token["id"])
        assert act("mltoken_show", user["name"], id=token["id"])["status"] == "active"
        assert act("mltoken_revoke", sysadmin["name"], id=token["id"])["revoked_by"] == sysadmin["name"]

    def test_revoke_all_own_or_as_sysadmin(
        self, act: Act, user: dict, other_user: dict, sysadmin: dict, token_of: Callable
    ) -> None:
        token_of(user, name="a")
        token_of(user, name="b")
        theirs = token_of(other_user, name="c")
        with pytest.raises(tk.NotAuthorized):
            act("mltoken_revoke_all", user["name"], user=other_user["name"])
        with pytest.raises(tk.NotAuthorized):
            act("mltoken_revoke_all", None)
        assert {t["name"] for t in act("mltoken_revoke_all", user["name"])} == {"a", "b"}
        assert act("mltoken_revoke_all", user["name"], user=user["id"]) == []
        assert act("mltoken_show", other_user["name"], id=theirs["id"])["status"] == "active"
        revoked = act("mltoken_revoke_all", sysadmin["name"], user=other_user["name"], reason="offboarding")
        assert [(t["name"], t["revoke_reason"]) for t in revoked] == [("c", "offboarding")]
        with pytest.raises(tk.ObjectNotFound):
            act("mltoken_revoke_all", sysadmin["name"], user="nobody-at-all")

    def test_revoke_all_of_the_listed_ids_only(
        self, act: Act, user: dict, other_user: dict, sysadmin: dict, token_of: Callable
    ) -> None:
        """`ids` narrows the owner's tokens; another owner's id is left alone, not an error that tells it exists;
        `all_users` with ids is a sysadmin's, for tokens of many owners at once."""
        a, b, theirs = token_of(user, name="a"), token_of(user, name="b"), token_of(other_user, name="c")
        revoked = act("mltoken_revoke_all", user["name"], ids=[a["id"], theirs["id"], "not-an-id"], reason="x")
        assert [t["name"] for t in revoked] == ["a"]
        assert act("mltoken_show", other_user["name"], id=theirs["id"])["status"] == "active"
        assert act("mltoken_show", user["name"], id=b["id"])["status"] == "active"
        with pytest.raises(tk.NotAuthorized):
            act("mltoken_revoke_all", user["name"], all_users=True, ids=[b["id"]])
        for bad in ({"all_users": True}, {"all_users": True, "ids": [b["id"]], "user": user["name"]}, {"ids": []}):
            with pytest.raises(tk.ValidationError):
                act("mltoken_revoke_all", sysadmin["name"], **bad)
        with pytest.raises(tk.ValidationError):
            act("mltoken_revoke_all", sysadmin["name"], all_users=True, ids=[str(i) for i in range(201)])
        both = act("mltoken_revoke_all", sysadmin["name"], all_users=True, ids=f"{b['id']}, {theirs['id']}")
        assert sorted(t["name"] for t in both) == ["b", "c"]


class TestUserDelete:
    def test_deleting_a_user_revokes_all_their_tokens(
        self, act: Act, user: dict, other_user: dict, sysadmin: dict, token_of: Callable
    ) -> None:
        mine = [token_of(user, name="a"), token_of(user, name="b")]
        theirs = token_of(other_user, name="c")
        act("user_delete", sysadmin["name"], id=user["name"])

        assert model.User.get(user["id"]).state == model.State.DELETED
        listed = act("mltoken_list", sysadmin["name"], user=user["id"])
        assert {t["status"] for t in listed} == {"revoked"} and {t["revoke_reason"] for t in listed} == {"user deleted"}
        assert revoked_jtis() == {claims(t["token"])["jti"] for t in mine}
        assert act("mltoken_show", other_user["name"], id=theirs["id"])["status"] == "active"

    def test_a_refused_deletion_revokes_nothing(
        self, act: Act, user: dict, other_user: dict, token_of: Callable
    ) -> None:
        token = token_of(user)
        with pytest.raises(tk.NotAuthorized):
            act("user_delete", other_user["name"], id=user["name"])
        assert act("mltoken_show", user["name"], id=token["id"])["status"] == "active"
