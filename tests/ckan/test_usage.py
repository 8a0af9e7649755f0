"""Usage you can see (issue 15 item 2) and the expiry e-mail switch (item 1), through the actions and pages:
`mltoken_usage`, `mltoken_patch`, calls today and the 30-day chart, unused tokens with bulk revoke, CSV export."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import ckan.plugins.toolkit as tk
import pytest
from ckanext.mltokens import service
from ckanext.mltokens.views import csv_cell
from sqlalchemy import text

from token_service.errors import StoreUnavailable
from token_service.lifecycle import Lifecycle
from token_service.store import UsageDaily

from .conftest import page_url

pytestmark = pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens")

HOSTILE = '=HYPERLINK("http://evil.test","x")<script>alert(1)</script>'


def used(token_id: str, **days_ago: int) -> None:
    """Daily counts as the validators write them: used(id, d0=5, d3=2) is 5 today and 2 three days ago."""
    today = datetime.now(UTC).date()
    with service.lifecycle().store.transaction() as s:
        for key, count in days_ago.items():
            s.add(UsageDaily(token_id=token_id, day=today - timedelta(days=int(key[1:])), count=count))


def idle_since(token_id: str, days: int) -> None:
    with service.lifecycle().store.transaction() as s:
        s.execute(
            text("UPDATE mltokens.token SET created_at = now() - make_interval(days => :d) WHERE id = :id"),
            {"d": days, "id": token_id},
        )


def test_usage_action_owner_checks_and_period(act: Callable, user: dict, other_user: dict, sysadmin: dict, token_of):
    mine, theirs = token_of(user, name="mine"), token_of(other_user, name="theirs")
    used(mine["id"], d0=4, d1=6, d40=9)
    used(theirs["id"], d0=1)

    (usage,) = act("mltoken_usage", user["name"])
    assert usage["id"] == mine["id"] and usage["today"] == 4 and len(usage["daily"]) == 30
    assert [d["count"] for d in usage["daily"][-2:]] == [6, 4]
    (one,) = act("mltoken_usage", user["name"], id=mine["id"], days="2")
    assert [d["count"] for d in one["daily"]] == [6, 4]
    with pytest.raises(tk.ObjectNotFound):
        act("mltoken_usage", user["name"], id=theirs["id"])
    with pytest.raises(tk.NotAuthorized):
        act("mltoken_usage", user["name"], user=other_user["name"])
    with pytest.raises(tk.NotAuthorized):
        act("mltoken_usage", user["name"], all_users=True)
    for days in (0, 91, "x", 2.5, [], True):
        with pytest.raises(tk.ValidationError):
            act("mltoken_usage", user["name"], days=days)
    with pytest.raises(tk.ValidationError):
        act("mltoken_usage", sysadmin["name"], id=mine["id"], user=user["name"])
    everyone = {u["id"] for u in act("mltoken_usage", sysadmin["name"], all_users=True)}
    assert {mine["id"], theirs["id"]} <= everyone


def test_patch_turns_expiry_notices_off_for_the_owner_only(act: Callable, user: dict, other_user: dict, token_of):
    token = token_of(user)
    assert token["expiry_notices"] is True
    assert act("mltoken_patch", user["name"], id=token["id"], expiry_notices="false")["expiry_notices"] is False
    with pytest.raises(tk.ObjectNotFound):
        act("mltoken_patch", other_user["name"], id=token["id"], expiry_notices=True)
    for bad in ("maybe", None, [], {}):
        with pytest.raises(tk.ValidationError):
            act("mltoken_patch", user["name"], id=token["id"], expiry_notices=bad)
    assert act("mltoken_show", user["name"], id=token["id"])["expiry_notices"] is False


def test_token_page_shows_calls_today_and_an_escaped_chart(visit: Callable, people: dict, token_of: Callable) -> None:
    token = token_of(people["ann"], name="charted")
    used(token["id"], d0=3, d2=12)
    body = visit(people["ann"]).get(page_url(people["ann"])).body
    row = re.search(rf'<tr id="mltoken-{token["id"]}".*?</tr>', body, re.S).group(0)
    assert "3 calls today" in row
    svg = re.search(r'<svg class="mltoken-chart".*?</svg>', row, re.S).group(0)
    assert len(re.findall(r"<rect ", svg)) == 30
    two_days_ago = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
    assert f"<title>{two_days_ago}: 12</title>" in svg
    assert 'height="26.0"' in svg  # the busiest day fills the chart
    assert "15 in all, at most 12 a day" in svg


def test_expiry_notices_form_needs_csrf_and_flips_the_switch(visit: Callable, people: dict, token_of: Callable) -> None:
    token = token_of(people["ann"], name="quiet please")
    ann, url = visit(people["ann"]), page_url(people["ann"])
    form_url = f"{url}/{token['id']}/notices"
    assert f'action="{form_url}"' in ann.get(url).body
    ann.post(form_url, {"expiry_notices": "off"}, status=400)  # no CSRF token
    assert service.lifecycle().show(token["id"], service.Actor.operator()).expiry_notices is True
    page = ann.post(form_url, {"expiry_notices": "off"}, csrf_from=url)
    assert "No more e-mails before the token" in page.body
    assert service.lifecycle().show(token["id"], service.Actor.operator()).expiry_notices is False
    ann.post(form_url, {"expiry_notices": "sometimes"}, status=400, csrf_from=url)
    bob = visit(people["bob"])
    bob.post(form_url, {"expiry_notices": "on"}, status=403, csrf_from=page_url(people["bob"]))
    assert service.lifecycle().show(token["id"], service.Actor.operator()).expiry_notices is False


def test_sysadmin_lists_unused_tokens_and_revokes_the_chosen_after_confirming(
    visit: Callable, people: dict, token_of: Callable
) -> None:
    stale = token_of(people["ann"], name=HOSTILE)
    idle_since(stale["id"], 45)
    also_stale = token_of(people["bob"], name="old script")
    idle_since(also_stale["id"], 31)
    fresh = token_of(people["bob"], name="fresh")
    root = visit(people["root"])
    page = root.get("/ckan-admin/ml-tokens").body
    unused = re.search(r'<form id="mltokens-unused".*?</form>', page, re.S).group(0)
    assert stale["id"] in unused and also_stale["id"] in unused and fresh["id"] not in unused
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in unused

    root.post("/ckan-admin/ml-tokens/revoke-unused", {"token": [stale["id"]]}, status=400)  # no CSRF token
    confirm = root.post(
        "/ckan-admin/ml-tokens/revoke-unused", {"token": [stale["id"]]}, csrf_from="/ckan-admin/ml-tokens"
    )
    assert 'name="confirmed" value="yes"' in confirm.body and "&lt;script&gt;" in confirm.body
    assert service.lifecycle().show(stale["id"], service.Actor.operator()).status == "active"  # not yet
    done = root.post(
        "/ckan-admin/ml-tokens/revoke-unused",
        {"token": [stale["id"]], "confirmed": "yes", "reason": "idle"},
        csrf_from="/ckan-admin/ml-tokens",
    )
    assert "1 token revoked." in done.body
    statuses = {t.id: t.status for t in service.lifecycle().list(service.Actor.operator())}
    assert statuses[stale["id"]] == "revoked" and statuses[also_stale["id"]] == "active"
    assert statuses[fresh["id"]] == "active"

    ann = visit(people["ann"])
    ann.get("/ckan-admin/ml-tokens", status=403)
    ann.post(
        "/ckan-admin/ml-tokens/revoke-unused",
        {"token": [also_stale["id"]], "confirmed": "yes"},
        status=403,
        csrf_from=page_url(people["ann"]),
    )
    assert service.lifecycle().show(also_stale["id"], service.Actor.operator()).status == "active"


def test_revoking_the_chosen_unused_tokens_is_all_or_nothing(
    visit: Callable, people: dict, token_of: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = token_of(people["ann"], name="one"), token_of(people["bob"], name="two")
    for token in (first, second):
        idle_since(token["id"], 40)
    revoke_row, calls = Lifecycle._revoke_row, []

    def failing_on_the_second(self: Lifecycle, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 2:
            raise StoreUnavailable("the database went away")
        return revoke_row(self, *args, **kwargs)

    monkeypatch.setattr(Lifecycle, "_revoke_row", failing_on_the_second)
    root = visit(people["root"])
    form = {"token": [first["id"], second["id"]], "confirmed": "yes"}
    done = root.post("/ckan-admin/ml-tokens/revoke-unused", form, csrf_from="/ckan-admin/ml-tokens")
    assert "nothing was changed" in done.body and "revoked." not in done.body and len(calls) == 2
    statuses = {t.id: t.status for t in service.lifecycle().list(service.Actor.operator())}
    assert statuses[first["id"]] == statuses[second["id"]] == "active"
    monkeypatch.setattr(Lifecycle, "_revoke_row", revoke_row)
    done = root.post("/ckan-admin/ml-tokens/revoke-unused", form, csrf_from="/ckan-admin/ml-tokens")
    assert "2 tokens revoked." in done.body


@pytest.mark.parametrize(
    "value, cell",
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("a=b", "a=b"),
        (7, "7"),
    ],
)
def test_csv_cells_that_a_spreadsheet_would_run_are_text(value: Any, cell: str) -> None:
    assert csv_cell(value) == cell


def test_usage_csv_for_sysadmins_with_injection_safe_cells(
    app: Any, visit: Callable, people: dict, token_of: Callable
) -> None:
    token = token_of(people["ann"], name=HOSTILE)
    used(token["id"], d0=2, d5=7)
    root = visit(people["root"])
    response = root.get("/ckan-admin/ml-tokens/usage.csv?days=7")
    assert response.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.body)))
    assert rows[0] == ["date", "token_id", "token_name", "owner_name", "status", "requests"]
    mine = [r for r in rows[1:] if r[1] == token["id"]]
    assert [(r[2], r[5]) for r in mine] == [("'" + HOSTILE, "7"), ("'" + HOSTILE, "2")]
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows[1:] for cell in row)
    for bad in ("0", "x", "100000", "-3"):
        root.get(f"/ckan-admin/ml-tokens/usage.csv?days={bad}", status=400)
    visit(people["ann"]).get("/ckan-admin/ml-tokens/usage.csv", status=403)
