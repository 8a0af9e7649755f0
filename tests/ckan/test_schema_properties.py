"""Property tests of every action of the plugin: whatever arrives over the API, an action
answers with its result or with CKAN's ValidationError (NotAuthorized or ObjectNotFound
where that is the answer) — never another error, which the API would turn into a 500 —
and a refused call changes nothing.

Determinism: every test runs with `derandomize=True` and `database=None`. Hypothesis then
derives its examples from the test itself instead of a random seed and keeps no database
of earlier failures, so every run — a laptop, CI, a re-run — tries the same examples: a
failure is reproducible and CI cannot go red by chance. The price is that a run explores
nothing new; the strategies therefore mix the classes that broke before (lists, dicts,
NUL, huge numbers, bidi controls, lone surrogates, very long strings, booleans where text
is expected) into every field, and to explore further run locally with
`derandomize=False` and more `max_examples`, then pin what you find as an explicit test
in test_bad_input.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from typing import Any

import ckan.model as model
import ckan.plugins.toolkit as tk
import pytest
from ckan.tests import factories
from ckanext.mltokens import service
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from werkzeug.datastructures import MultiDict

from tests.ckan.test_actions import field_errors
from token_service.store import AuditEvent, Revocation, Token

from .conftest import roles_of

pytestmark = [pytest.mark.ckan, pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens")]

PREDICT = "model:sentiment:predict"
# Values near the fields' edges and of every class that has broken an action before.
EDGES = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202e",
    "invoice\u202efdp.exe",
    "\u2066x\u2069",
    "zero\u200bwidth",
    "\ud800",
    "x" * 10_000,
    "7d",
    "90d",
    "91d",
    "1000000000d",
    "1" * 400,
    "0",
    "-1",
    "1e999",
    "NaN",
    "inf",
    "2030-01-01",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01",
    "true",
    "false",
    "maybe",
    "yes",
    PREDICT,
    "model:vision:train",
    "access_token",
    "client_credentials",
    '\'; DROP TABLE "user"; --',
    10**30,
    -(10**30),
    2**63,
    10**400,
    0,
    1,
    -1,
    2.5,
    float("inf"),
    float("-inf"),
    float("nan"),
    True,
    False,
    None,
]
json_scalars = st.one_of(
    st.sampled_from(EDGES),
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
# Placeholders the tests replace by a real user's name or id or a real token's id.
SELF, OTHER, SELF_ID, MINE, THEIRS = "<self>", "<other>", "<self id>", "<my token>", "<their token>"
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

Act = Callable[..., Any]


def snapshot() -> tuple[Any, ...]:
    """Everything an action could change: the tokens as they are, revocations, audit events, users."""
    with service.lifecycle().store.transaction() as s:
        tokens = sorted(
            s.execute(
                select(
                    Token.id,
                    Token.status,
                    Token.current_jti,
                    Token.expires_at,
                    Token.revoke_reason,
                    Token.expiry_notices,
                )
            ).all()
        )
        counted = [s.scalar(select(func.count()).select_from(t)) for t in (Revocation, AuditEvent)]
    users = sorted(model.Session.query(model.User.id, model.User.state).all())
    return tuple(tokens), *counted, tuple(users)


def resolve(value: Any, names: dict[str, str]) -> Any:
    """The value with the placeholders replaced, inside lists and dicts too."""
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, list):
        return [resolve(v, names) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, names) for k, v in value.items()}
    return value


def answer(
    act: Act, action: str, caller: str, data: dict[str, Any], allowed: tuple[type[Exception], ...]
) -> tuple[bool, Any]:
    """Call the action: (True, None) when it refused with one of `allowed`, having changed
    nothing; (False, its result) otherwise. Any other exception fails the test."""
    before = snapshot()
    try:
        result = act(action, caller, **data)
    except allowed as exc:
        if isinstance(exc, tk.ValidationError):
            fields = field_errors(exc)
            assert fields and all(
                isinstance(k, str) and isinstance(v, list) and v and all(isinstance(m, str) and m for m in v)
                for k, v in fields.items()
            ), exc.error_dict
        assert snapshot() == before, f"{action} refused {data!r} but changed state"
        return True, None
    return False, result


def world(act: Act, token_of: Callable, as_sysadmin: bool) -> tuple[str, dict[str, str]]:
    """A fresh caller and another user with one token each (fresh, so per-user limits never interfere)."""
    me = factories.Sysadmin() if as_sysadmin else factories.User()
    other = factories.User()
    names = {
        SELF: me["name"],
        SELF_ID: me["id"],
        OTHER: other["name"],
        MINE: token_of(me, name="mine")["id"],
        THEIRS: token_of(other, name="theirs")["id"],
    }
    return me["name"], names


CREATE_FIELDS = ("name", "roles", "ttl", "expires", "rate_limit", "daily_quota", "kind")


@PROPERTY
@given(
    overrides=st.dictionaries(st.sampled_from(CREATE_FIELDS), json_values, min_size=1, max_size=2),
    drop=st.sets(st.sampled_from(CREATE_FIELDS), max_size=1),
)
def test_create(act: Act, overrides: dict, drop: set) -> None:
    """A valid body with one or two fields replaced by anything (or left out), so every
    field's own checks are reached rather than hidden behind an earlier field's error."""
    caller = factories.User()["name"]
    body = {"name": "n", "roles": [PREDICT], "ttl": "1d"} | overrides
    body = {k: v for k, v in body.items() if k not in drop}
    before = snapshot()
    no, created = answer(act, "mltoken_create", caller, body, (tk.ValidationError,))
    if not no:
        assert created["token"] and created["status"] == "active" and len(snapshot()[0]) == len(before[0]) + 1


@PROPERTY
@given(
    data=st.dictionaries(
        st.sampled_from(["user", "all_users", "include_inactive", "unused"]),
        json_values | st.sampled_from([SELF, SELF_ID, OTHER]),
        max_size=3,
    ),
    as_sysadmin=st.booleans(),
)
def test_list(act: Act, token_of: Callable, data: dict, as_sysadmin: bool) -> None:
    caller, names = world(act, token_of, as_sysadmin)
    data = resolve(data, names)
    allowed = (tk.ValidationError, tk.NotAuthorized, tk.ObjectNotFound)
    no, listed = answer(act, "mltoken_list", caller, data, allowed)
    if not no and not as_sysadmin:
        assert {t["id"] for t in listed} <= {names[MINE]}  # a user never sees another user's token


@PROPERTY
@given(
    action=st.sampled_from(["mltoken_show", "mltoken_renew", "mltoken_rotate", "mltoken_revoke"]),
    token=json_values | st.sampled_from([MINE, THEIRS]),
    extra=st.dictionaries(st.sampled_from(["ttl", "expires", "reason"]), json_values, max_size=2),
    as_sysadmin=st.booleans(),
)
def test_token_actions(act: Act, token_of: Callable, action: str, token: Any, extra: dict, as_sysadmin: bool) -> None:
    """show, renew, rotate and revoke with any id (a real one of the caller's or another user's
    included) and any other fields: a result, not found, or a field error."""
    caller, names = world(act, token_of, as_sysadmin)
    data = {"id": resolve(token, names), **extra}
    no, _ = answer(act, action, caller, data, (tk.ValidationError, tk.ObjectNotFound))
    assert no or data["id"] == names[MINE] or (as_sysadmin and data["id"] == names[THEIRS])


@PROPERTY
@given(
    data=st.dictionaries(
        st.sampled_from(["user", "reason"]), json_values | st.sampled_from([SELF, SELF_ID, OTHER]), max_size=2
    ),
    as_sysadmin=st.booleans(),
)
def test_revoke_all(act: Act, token_of: Callable, data: dict, as_sysadmin: bool) -> None:
    caller, names = world(act, token_of, as_sysadmin)
    data = resolve(data, names)
    no, _ = answer(act, "mltoken_revoke_all", caller, data, (tk.ValidationError, tk.NotAuthorized, tk.ObjectNotFound))
    if not no and not as_sysadmin:  # only the caller's own token went
        theirs = service.lifecycle().show(names[THEIRS], service.Actor.operator())
        assert theirs.status == "active"


@PROPERTY
@given(
    data=st.dictionaries(
        st.sampled_from(["id", "user", "all_users", "days"]),
        json_values | st.sampled_from([SELF, SELF_ID, OTHER, MINE, THEIRS, "30", "90", "91"]),
        max_size=3,
    ),
    as_sysadmin=st.booleans(),
)
def test_usage(act: Act, token_of: Callable, data: dict, as_sysadmin: bool) -> None:
    """Whatever it is asked, mltoken_usage answers with usage or a 4xx, changes nothing, and shows a
    user only their own tokens."""
    caller, names = world(act, token_of, as_sysadmin)
    data = resolve(data, names)
    allowed = (tk.ValidationError, tk.NotAuthorized, tk.ObjectNotFound)
    no, usage = answer(act, "mltoken_usage", caller, data, allowed)
    if not no:
        assert all(len(u["daily"]) >= 1 for u in usage)
        if not as_sysadmin:
            assert {u["id"] for u in usage} <= {names[MINE]}


@PROPERTY
@given(
    token=json_values | st.sampled_from([MINE, THEIRS]),
    extra=st.dictionaries(st.sampled_from(["expiry_notices", "name", "roles"]), json_values, max_size=2),
    as_sysadmin=st.booleans(),
)
def test_patch(act: Act, token_of: Callable, token: Any, extra: dict, as_sysadmin: bool) -> None:
    """mltoken_patch with any id and any fields: the token's switch changed, not found, or a field error."""
    caller, names = world(act, token_of, as_sysadmin)
    data = {"id": resolve(token, names), **extra}
    no, patched = answer(act, "mltoken_patch", caller, data, (tk.ValidationError, tk.ObjectNotFound))
    assert no or data["id"] == names[MINE] or (as_sysadmin and data["id"] == names[THEIRS])
    if not no:
        assert (
            patched["expiry_notices"] is service.lifecycle().show(data["id"], service.Actor.operator()).expiry_notices
        )
        assert patched["name"] in ("mine", "theirs")  # nothing but the switch is patched


@PROPERTY
@given(data=st.dictionaries(st.text(max_size=10).filter(lambda k: k != "context"), json_values, max_size=3))
def test_roles_list_ignores_whatever_else_it_is_given(act: Act, user: dict, data: dict) -> None:
    assert roles_of(act("mltoken_roles_list", user["name"], **data)) == [
        "model:sentiment:predict",
        "model:sentiment:train",
        "model:vision:predict",
        "model:vision:train",
    ]


@PROPERTY
@given(user_id=json_values)
def test_user_delete_as_chained_by_the_plugin(act: Act, sysadmin: dict, user_id: Any) -> None:
    """Our `user_delete` runs first and looks the user up; no such user is named here."""
    assert answer(act, "user_delete", sysadmin["name"], {"id": user_id}, (tk.ValidationError, tk.ObjectNotFound))[0]


# -- the leak endpoints (HTTP; no login) ----------------------------------------------------
# Each request takes at least leaks.RESPONSE_FLOOR, so these try fewer examples.

LEAK_PROPERTY = settings(PROPERTY, max_examples=20)
LEAK_SECRET = "property-secret"


def _leak_client(app: Any) -> Callable[..., Any]:
    """A client of its own address (the leak endpoints count requests per address and minute)."""
    client, remote = app.test_client(), f"10.9.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    return lambda url, **kw: client.post(url, environ_base={"REMOTE_ADDR": remote}, **kw)


def _leak_answer(response: Any, allowed: set[int]) -> None:
    assert response.status_code in allowed, (response.status_code, response.data[:300])
    if response.status_code != 200:
        assert response.json["error"] and response.json["error_description"]


@LEAK_PROPERTY
@given(
    fields=st.lists(
        st.tuples(
            st.sampled_from(["token", "token_type_hint", "other"]),
            # a form carries UTF-8: no lone surrogates (the test client could not send them)
            (st.sampled_from(EDGES).map(str) | st.text(max_size=50)).filter(
                lambda v: not any("\ud800" <= c <= "\udfff" for c in v)
            ),
        ),
        max_size=3,
    ),
    mine=st.booleans(),
)
def test_revocation_endpoint(app: Any, token_of: Callable, fields: list, mine: bool) -> None:
    """Any form body: 200 (revoked or not, the same) or 400 invalid_request; a refusal changes nothing."""
    token = token_of(factories.User())
    data = [(k, token["token"] if mine and k == "token" else v) for k, v in fields]
    before = snapshot()
    response = _leak_client(app)("/api/mltokens/revoke", data=MultiDict(data))
    _leak_answer(response, {200, 400})
    if response.status_code == 400:
        assert snapshot() == before


@LEAK_PROPERTY
@given(body=json_values, mine=st.booleans())
@pytest.mark.ckan_config("ckanext.mltokens.leak_report_secret", LEAK_SECRET)
def test_report_endpoint(app: Any, token_of: Callable, body: Any, mine: bool) -> None:
    """Any JSON body, correctly signed: 200 `[]` or a 4xx with an error; a refusal changes nothing."""
    token = token_of(factories.User())
    if mine:
        body = [{"token": token["token"], "url": body}]
    raw = json.dumps(body, allow_nan=True).encode()
    signature = "sha256=" + hmac.new(LEAK_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    before = snapshot()
    response = _leak_client(app)(
        "/api/mltokens/leaks", data=raw, headers={"X-Mltokens-Signature": signature}, content_type="application/json"
    )
    _leak_answer(response, {200, 400, 413})
    if response.status_code == 200:
        assert response.json == []
    else:
        assert snapshot() == before
