"""Rotation without downtime (issue 15 item 5): `mltoken_rotate`, the token page's Rotate with both
token strings' states shown, and the old string working until the grace period ends."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import ckan.plugins.toolkit as tk
import pytest
from ckanext.mltokens import service
from ckanext.mltokens.leaks import reports
from freezegun import freeze_time

from token_service.leaks import Found

from .conftest import claims, page_url, secret_in
from .test_actions import revoked_jtis

pytestmark = [
    pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens"),
    pytest.mark.ckan_config("ckanext.mltokens.rotate_grace", "20m"),
]
Act = Callable[..., Any]


def works(secret: str) -> bool:
    """Whether a token string still verifies and is not revoked (what `mltokens check` says)."""
    from token_service.verify import verify

    lifecycle = service.lifecycle()
    return verify(secret, lifecycle.settings, lifecycle.issuer.jwks(), lifecycle.store).valid


def test_rotate_returns_a_new_token_and_the_old_one_works_for_the_grace(
    act: Act, user: dict, token_of: Callable
) -> None:
    token = token_of(user)
    rotated = act("mltoken_rotate", user["name"], id=token["id"], ttl="3d")
    assert rotated["id"] == token["id"] and rotated["renew_count"] == 1
    assert rotated["token"] != token["token"] and claims(rotated["token"])["token_id"] == token["id"]
    assert works(token["token"]) and works(rotated["token"])
    assert claims(token["token"])["jti"] in revoked_jtis()  # revoked, effective later
    until = datetime.fromisoformat(rotated["previous_valid_until"])
    shown = act("mltoken_show", user["name"], id=token["id"])
    assert shown["previous_valid_until"] == rotated["previous_valid_until"]
    assert 19 * 60 < (until - datetime.fromisoformat(rotated["issued_at"])).total_seconds() <= 20 * 60
    with freeze_time(until):
        assert not works(token["token"]) and works(rotated["token"])


def test_rotate_is_refused_like_renew(act: Act, user: dict, other_user: dict, token_of: Callable) -> None:
    token = token_of(user)
    with pytest.raises(tk.ObjectNotFound):
        act("mltoken_rotate", other_user["name"], id=token["id"])
    with pytest.raises(tk.NotAuthorized):
        act("mltoken_rotate", None, id=token["id"])
    act("mltoken_revoke", user["name"], id=token["id"])
    with pytest.raises(tk.ValidationError):
        act("mltoken_rotate", user["name"], id=token["id"])


def test_the_page_rotates_and_shows_both_states(visit: Callable, people: dict, token_of: Callable) -> None:
    token = token_of(people["ann"], name="svc")
    ann, url = visit(people["ann"]), page_url(people["ann"])
    assert f'href="{url}/{token["id"]}/rotate"' in ann.get(url).body
    confirm = ann.get(f"{url}/{token['id']}/rotate")
    assert 'Rotate the token "svc"?' in confirm.body and "keeps working for 20 minutes" in confirm.body
    assert "no-store" in confirm.headers["Cache-Control"]
    fields = {"_csrf_token": ann.csrf(confirm), "mltoken_form": ann.nonce(confirm)}
    assert ann.app.post(f"{url}/{token['id']}/rotate", data=fields, follow_redirects=False).status_code == 303
    page = ann.get(url)
    secret = secret_in(page)
    assert secret != token["token"] and 'Token "svc" rotated' in page.body and 'id="mltoken-previous"' in page.body
    assert works(secret) and works(token["token"])
    listing = ann.get(url).body
    assert re.search(r"previous token valid until .+ \(rotated\)", listing)
    ann.app.post(f"{url}/{token['id']}/rotate", data=fields)  # the same form again acts no more
    assert service.lifecycle().show(token["id"], service.Actor.operator()).renew_count == 1
    ann.app.get(f"/user/{people['bob']['name']}/ml-tokens/{token['id']}/rotate", status=403)
    # reported leaked in its grace: only the old string dies, and the page says no more about it
    assert reports().report(Found.of({"token": token["token"]}, "test")) is True
    assert not works(token["token"]) and works(secret)
    assert "previous token valid until" not in ann.get(url).body


def test_rotate_without_a_csrf_token_is_refused(visit: Callable, people: dict, token_of: Callable) -> None:
    token = token_of(people["ann"])
    ann, url = visit(people["ann"]), page_url(people["ann"])
    ann.app.post(f"{url}/{token['id']}/rotate", data={}, status=400)
    assert service.lifecycle().show(token["id"], service.Actor.operator()).renew_count == 0
