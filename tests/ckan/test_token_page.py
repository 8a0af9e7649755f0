"""The token pages' behaviour (issue 12, items 1 and 16): secrets shown once after a redirect,
each form acting once, confirmations, the expiry fields, limits, labels, the sysadmin filter."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import ckan.model as model
import pytest
from ckanext.mltokens import helpers, service
from sqlalchemy import text

from .conftest import PREDICT, Visitor, page_url, secret_in

pytestmark = pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens")


def tokens_of(user: dict[str, Any]) -> list[Any]:
    return service.lifecycle().list(service.actor_of(model.User.get(user["id"])))


def form(visitor: Visitor, url: str, **data: Any) -> dict[str, Any]:
    """The fields a browser sends from the form on page `url`: CSRF token and nonce, then `data`."""
    page = visitor.get(url)
    return {"_csrf_token": visitor.csrf(page), "mltoken_form": visitor.nonce(page), **data}


def test_create_redirects_and_shows_the_token_once_with_copy_button_and_curl(visit: Callable, people: dict) -> None:
    ann, url = visit(people["ann"]), page_url(people["ann"])
    fields = form(ann, url, name="notebook", expiry="604800", roles=[PREDICT, "model:vision:predict"])
    posted = ann.app.post(url, data=fields, follow_redirects=False)
    assert posted.status_code == 303 and posted.headers["Location"].endswith(url)
    cookie = posted.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and f"Path={url}" in cookie

    page = ann.get(url)
    secret = secret_in(page)
    assert secret not in posted.headers["Location"] and secret not in cookie
    assert "no-store" in page.headers["Cache-Control"]
    assert 'Token "notebook" created' in page.body and page.body.count("Copy it now") == 1
    assert f'data-module-copy-value="{secret}"' in page.body
    assert f"curl -H &#34;Authorization: Bearer {secret}&#34;" in page.body
    assert "http://models.test/v1/models/sentiment/predict" in page.body
    [token] = tokens_of(people["ann"])
    assert (token.name, token.roles) == ("notebook", (PREDICT, "model:vision:predict"))
    assert (token.expires_at - token.issued_at).days == 7

    assert page.headers["Set-Cookie"].startswith("mltokens_result=;")  # the browser forgets the nonce
    again = ann.get(url)  # a reload: the token string is gone
    assert secret not in again.body and 'id="mltoken-secret"' not in again.body and token.id in again.body
    ann.app.set_cookie("mltokens_result", fields["mltoken_form"], domain="test.ckan.net", path=url)  # kept
    assert "shown only once, and it was shown already" in ann.get(url).body


def test_a_repeated_create_submission_makes_one_token_and_shows_it(visit: Callable, people: dict) -> None:
    """A double click: the second POST (same form) leads to the first one's token, shown once."""
    ann, url = visit(people["ann"]), page_url(people["ann"])
    fields = form(ann, url, name="twice", roles=[PREDICT])
    first = ann.app.post(url, data=fields, follow_redirects=False)  # its answer is never seen
    second = ann.app.post(url, data=fields, follow_redirects=False)
    assert first.status_code == second.status_code == 303
    page = ann.get(url)
    secret = secret_in(page)
    assert [t.name for t in tokens_of(people["ann"])] == ["twice"]
    assert "already have an active token with this name" not in page.body

    third = ann.app.post(url, data=fields)  # Back, then submit again: no second token, a clear message
    assert "This form was sent already, for the token &#34;twice&#34;" in third.body and secret not in third.body
    assert [t.name for t in tokens_of(people["ann"])] == ["twice"]


def test_a_failed_submission_can_be_corrected_and_sent_again(visit: Callable, people: dict) -> None:
    ann, url = visit(people["ann"]), page_url(people["ann"])
    fields = form(ann, url, name="fixed")
    assert "Choose at least one role." in ann.app.post(url, data=fields).body
    assert secret_in(ann.app.post(url, data={**fields, "roles": [PREDICT]}))


def test_renew_asks_for_confirmation_and_a_reload_does_not_renew_again(
    visit: Callable, people: dict, token_of: Callable
) -> None:
    token = token_of(people["ann"], name="nb")
    ann, url = visit(people["ann"]), page_url(people["ann"])
    listing = ann.get(url).body
    assert f'href="{url}/{token["id"]}/renew"' in listing and "mltoken-renew" in listing
    confirm = ann.get(f"{url}/{token['id']}/renew")
    assert 'Renew the token "nb"?' in confirm.body and "no-store" in confirm.headers["Cache-Control"]
    assert service.lifecycle().show(token["id"], service.Actor.operator()).renew_count == 0

    fields = {"_csrf_token": ann.csrf(confirm), "mltoken_form": ann.nonce(confirm)}
    posted = ann.app.post(f"{url}/{token['id']}/renew", data=fields, follow_redirects=False)
    assert posted.status_code == 303
    page = ann.get(url)
    secret = secret_in(page)
    assert secret != token["token"] and 'Token "nb" renewed' in page.body
    assert ann.get(url).body.count('id="mltoken-secret"') == 0  # reloading the result page
    ann.app.post(f"{url}/{token['id']}/renew", data=fields)  # resending the POST
    assert service.lifecycle().show(token["id"], service.Actor.operator()).renew_count == 1
    ann.app.get(f"/user/{people['bob']['name']}/ml-tokens/{token['id']}/renew", status=403)


def test_revoke_confirmation_page_has_the_dialogs_content(visit: Callable, people: dict, token_of: Callable) -> None:
    """The dialog (JavaScript) shows this very block: reason field, wording and a red button are the same."""
    token = token_of(people["ann"], name="nb")
    ann, url = visit(people["ann"]), page_url(people["ann"])
    confirm = ann.get(f"{url}/{token['id']}/revoke").body
    block = confirm[confirm.index('<div class="mltoken-confirm">') :]
    assert 'name="reason"' in block and "btn-danger mltoken-confirm-submit" in block
    assert "Programs using it will stop working at once." in block
    assert f'href="{url}"' in block  # Cancel, without JavaScript
    assert 'id="mltoken-confirm-modal"' in ann.get(url).body


def test_a_typed_date_with_a_preset_lifetime_is_refused_not_ignored(visit: Callable, people: dict) -> None:
    ann, url = visit(people["ann"]), page_url(people["ann"])
    latest = re.search(r'max="(\d{4}-\d{2}-\d{2})"', ann.get(url).body).group(1)
    page = ann.app.post(url, data=form(ann, url, name="dated", expiry="604800", expires_on=latest, roles=[PREDICT]))
    assert "Choose &#34;on the date:&#34; to use the date" in page.body
    assert tokens_of(people["ann"]) == []


def test_the_date_hint_names_the_latest_date_in_words(visit: Callable, people: dict) -> None:
    """The date field shows the browser's own format: the hint must not show another one (ISO)."""
    ann, url = visit(people["ann"]), page_url(people["ann"])
    body = ann.get(url).body
    latest = datetime.fromisoformat(re.search(r'max="(\d{4}-\d{2}-\d{2})"', body).group(1))
    hint = re.search(r'<span class="info-block">(Choose[^<]*)</span>', body).group(1)
    assert latest.strftime("%B") in hint and str(latest.year) in hint and latest.date().isoformat() not in hint


def test_the_tab_is_highlighted_on_a_page_answering_a_post(visit: Callable, people: dict) -> None:
    ann, url = visit(people["ann"]), page_url(people["ann"])
    page = ann.app.post(url, data=form(ann, url, name="no roles"))
    assert "Choose at least one role." in page.body
    assert re.search(rf'<li class="active"><a href="{url}"', page.body)


def test_limits_rate_limit_field_refuses_zero_and_both_bad_limits_are_reported(visit: Callable, people: dict) -> None:
    ann, url = visit(people["ann"]), page_url(people["ann"])
    body = ann.get(url).body
    rate = re.search(r'<input id="field-mltoken-rate-limit"[^>]*>', body).group(0)
    assert 'min="0.001"' in rate and 'max="50"' in rate
    page = ann.app.post(url, data=form(ann, url, name="capped", roles=[PREDICT], rate_limit="0", daily_quota="0"))
    assert "The rate limit must be above 0" in page.body and "The daily quota must be between 1 and" in page.body
    assert tokens_of(people["ann"]) == []


def test_use_count_has_a_label(visit: Callable, people: dict, token_of: Callable) -> None:
    token = token_of(people["ann"], name="used")
    with service.lifecycle().store.transaction() as s:
        s.execute(
            text("UPDATE mltokens.token SET use_count = 2, last_used_at = now() WHERE id = :id"), {"id": token["id"]}
        )
    body = visit(people["ann"]).get(page_url(people["ann"])).body
    assert "2 requests in all" in body and "(2)" not in body


def _lifetime(token: dict[str, Any], lifetime: timedelta, left: timedelta) -> None:
    """Make `token` one of `lifetime` with `left` to go (the store's clock moved instead of waiting)."""
    now = datetime.now(UTC)
    with service.lifecycle().store.transaction() as s:
        s.execute(
            text("UPDATE mltokens.token SET issued_at = :issued, expires_at = :expires WHERE id = :id"),
            {"issued": now + left - lifetime, "expires": now + left, "id": token["id"]},
        )


@pytest.mark.ckan_config("ckanext.mltokens.max_tokens_per_owner", "10")
def test_expires_soon_in_the_last_quarter_of_the_lifetime_within_the_warning(
    visit: Callable, people: dict, token_of: Callable
) -> None:
    week, quarter = timedelta(days=7), timedelta(days=7) / 4
    cases = {
        "new-week": (week, week - timedelta(seconds=5)),
        "late-week": (week, quarter - timedelta(hours=1)),
        "early-week": (week, quarter + timedelta(hours=1)),
        "late-90": (timedelta(days=90), timedelta(days=6)),
        "mid-90": (timedelta(days=90), timedelta(days=8)),
    }
    for name, (lifetime, left) in cases.items():
        _lifetime(token_of(people["ann"], name=name, ttl="90d"), lifetime, left)
    body = visit(people["ann"]).get(page_url(people["ann"])).body
    soon = {name for name in cases if "expires soon" in body[body.index(f'data-name="{name}"') :].split("</tr>", 1)[0]}
    assert soon == {"late-week", "late-90"}


def test_expires_soon_helper_for_inactive_tokens() -> None:
    now = datetime.now(UTC)
    token = {"status": "revoked", "issued_at": (now - timedelta(days=7)).isoformat(), "expires_at": now.isoformat()}
    assert not helpers.mltokens_expires_soon(token)


def test_sysadmin_page_offers_revoke_all_only_for_an_existing_user(
    visit: Callable, people: dict, token_of: Callable
) -> None:
    token_of(people["ann"], name="ann-one")
    root = visit(people["root"])
    unknown = root.get("/ckan-admin/ml-tokens?user=nobody-at-all").body
    assert "User not found." in unknown and "Revoke all of" not in unknown and "ann-one" not in unknown
    refused = root.get("/ckan-admin/ml-tokens/revoke-all?user=nobody-at-all")
    assert "User not found." in refused.body and 'class="mltoken-confirm"' not in refused.body
    by_id = root.get(f"/ckan-admin/ml-tokens?user={people['ann']['id']}").body
    assert f"Revoke all of {people['ann']['name']}" in by_id and "ann-one" in by_id


HOSTILE = '<img src=x onerror="window.__xss=1">'


def test_no_user_text_reaches_a_data_module_attribute(visit: Callable, people: dict, token_of: Callable) -> None:
    """CKAN's modules may insert data-module-* values as HTML: the pages put no user text there."""
    token = token_of(people["ann"], name=HOSTILE)
    ann, url = visit(people["ann"]), page_url(people["ann"])
    root = visit(people["root"])
    pages = [
        ann.get(url),
        ann.get(f"{url}/{token['id']}/revoke"),
        ann.get(f"{url}/{token['id']}/renew"),
        root.get("/ckan-admin/ml-tokens"),
        root.get(f"/ckan-admin/ml-tokens?user={people['ann']['name']}"),
        root.get(f"/ckan-admin/ml-tokens?user={HOSTILE}"),
        root.get(f"/ckan-admin/ml-tokens/revoke-all?user={people['ann']['name']}"),
    ]
    for page in pages:
        assert HOSTILE not in page.body and "data-module-content" not in page.body
        for name, value in re.findall(r'data-module-([\w-]+)="([^"]*)"', page.body):
            assert "img" not in value and "xss" not in value, (name, value)
    assert "Revoke all of" not in pages[5].body


def test_the_revoke_reason_is_shown_escaped_to_the_sysadmin_and_the_owner(
    visit: Callable, people: dict, token_of: Callable, act: Callable
) -> None:
    """issue 13: the sysadmin page showed no revoke reason."""
    token = token_of(people["ann"], name="leaky")
    reason = f"{HOSTILE} & 'pasted in a chat'"
    act("mltoken_revoke", people["root"]["name"], id=token["id"], reason=reason)
    pages = (visit(people["root"]).get("/ckan-admin/ml-tokens"), visit(people["ann"]).get(page_url(people["ann"])))
    for page in pages:
        assert HOSTILE not in page.body
        row = page.body.split(f'id="mltoken-{token["id"]}"')[1].split("</tr>")[0]
        shown = re.search(r'class="text-muted mltoken-revoke-reason">([^<]*)<', row).group(1)
        assert html.unescape(shown) == f"Reason: {reason}"
