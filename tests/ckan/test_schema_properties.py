"""Property tests of the action schemas: whatever arrives over the API, an action answers
with its result or with CKAN's ValidationError / ObjectNotFound — never another error —
and a refused call changes nothing."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ckan.plugins.toolkit as tk
import pytest
from ckanext.mltokens import service
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from token_service.store import AuditEvent, Token

pytestmark = [pytest.mark.ckan, pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens")]

# What a JSON body can carry, with values near the fields' edges mixed in.
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=300),
    st.sampled_from(["", " ", "7d", "90d", "91d", "0", "-1", "1e999", "NaN", "2030-01-01", "model:sentiment:predict",
                     "model:vision:train", "access_token", "client_credentials", "\x00", "'; DROP TABLE user; --"]),
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=8)
FIELDS = ("name", "roles", "ttl", "expires", "rate_limit", "daily_quota", "kind")
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def counts() -> tuple[int, int]:
    with service.lifecycle().store.transaction() as s:
        return s.scalar(select(func.count()).select_from(Token)), s.scalar(select(func.count()).select_from(AuditEvent))


@PROPERTY
@given(overrides=st.dictionaries(st.sampled_from(FIELDS), json_values, min_size=1, max_size=2),
       drop=st.sets(st.sampled_from(FIELDS), max_size=1))
def test_create_answers_a_result_or_a_validation_error(act: Callable[..., Any], user: dict, overrides: dict,
                                                       drop: set) -> None:
    """A valid body with one or two fields replaced by anything (or left out), so every
    field's own checks are reached rather than hidden behind an earlier field's error."""
    body = {"name": f"n{counts()[1]}", "roles": ["model:sentiment:predict"], "ttl": "1d"} | overrides
    body = {k: v for k, v in body.items() if k not in drop}
    before = counts()
    try:
        created = act("mltoken_create", user["name"], **body)
    except tk.ValidationError as exc:
        assert exc.error_dict and all(isinstance(v, list) and v for v in exc.error_dict.values())
        assert counts() == before
    else:
        assert created["token"] and created["status"] == "active"
        service.lifecycle().store.engine.dispose()  # keep the pool small across examples


@PROPERTY
@given(token_id=json_values, reason=json_values)
def test_token_id_actions_answer_not_found_or_a_validation_error(act: Callable[..., Any], user: dict,
                                                                 token_id: Any, reason: Any) -> None:
    before = counts()
    for action, extra in (("mltoken_show", {}), ("mltoken_renew", {}), ("mltoken_revoke", {"reason": reason})):
        with pytest.raises((tk.ObjectNotFound, tk.ValidationError)):
            act(action, user["name"], id=token_id, **extra)
    assert counts() == before
