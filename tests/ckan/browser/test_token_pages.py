"""The token pages in headless chromium against a live CKAN: the journeys a user and a sysadmin take."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ckan.tests import factories
from ckanext.mltokens import service
from playwright.sync_api import Page, expect
from sqlalchemy import text

from ..conftest import PASSWORD, PREDICT, claims


def log_in(page: Page, user: dict[str, Any]) -> None:
    page.goto("/user/login")
    page.fill("#field-login", user["name"])
    page.fill("#field-password", PASSWORD)
    page.locator("#field-password").press("Enter")
    expect(page).to_have_url(re.compile(rf"/user/{user['name']}/ml-tokens$"))
    page.wait_for_load_state("load")  # stylesheets applied: layout checks measure the styled page


def ready(page: Page, module: str) -> None:
    """Wait until CKAN's JavaScript has initialised `module` on the page (after its i18n loads)."""
    page.wait_for_function(f"() => (window.ckan?.module?.instances?.['{module}'] || []).length > 0")


def clipboard(page: Page) -> str:
    """The clipboard's text, once the copy has landed (waits up to 5 s)."""
    for _ in range(50):
        text = page.evaluate("navigator.clipboard.readText()")
        if text:
            return text
        page.wait_for_timeout(100)
    return ""


def row(page: Page, name: str) -> Any:
    return page.locator(f"#mltokens-table tr[data-name='{name}']")


def test_user_creates_copies_renews_and_revokes_a_token(
    new_page: Callable[[], Page], shoot: Callable[..., Any]
) -> None:
    user = factories.User(password=PASSWORD, fullname="Ada Lovelace", image_url="")
    page = new_page()
    log_in(page, user)
    expect(page.locator(".nav-tabs .active, .nav .active").first).to_contain_text("ML API tokens")
    shoot(page, "01-empty")

    page.fill("#field-mltoken-name", "sentiment notebook")
    page.select_option("#field-mltoken-expiry", label="in 7 days")
    page.check(f"input[name=roles][value='{PREDICT}']")
    page.click("#mltoken-create")
    expect(page.locator("#mltoken-created")).to_contain_text('Token "sentiment notebook" created')
    secret = page.input_value("#mltoken-secret")
    token = claims(secret)
    assert token["roles"] == [PREDICT] and token["owner_name"] == user["name"]
    assert token["exp"] - token["iat"] == 7 * 86400
    expect(page.locator("#mltoken-curl")).to_contain_text(f"Authorization: Bearer {secret}")

    page.bring_to_front()  # copying needs a focused document
    ready(page, "copy-into-buffer")
    page.click("#mltoken-copy")
    assert clipboard(page) == secret
    expect(row(page, "sentiment notebook")).to_contain_text("active")
    shoot(page, "02-token-created")

    ready(page, "mltokens-confirm")
    row(page, "sentiment notebook").locator(".mltoken-renew").click()
    expect(page.locator(".modal.show")).to_contain_text('Renew the token "sentiment notebook"?')
    page.locator(".modal.show").get_by_role("button", name="Renew").click()
    expect(page.locator(".alert-success").first).to_contain_text('Token "sentiment notebook" renewed')
    renewed = page.input_value("#mltoken-secret")
    assert renewed != secret and claims(renewed)["token_id"] == token["token_id"]

    page.goto("/ml-tokens")
    assert secret not in page.content() and renewed not in page.content()
    expect(page.locator("#mltoken-secret")).to_have_count(0)

    ready(page, "mltokens-confirm")
    row(page, "sentiment notebook").locator(".mltoken-revoke").click()
    dialog = page.locator(".modal.show")
    expect(dialog).to_contain_text('Revoke the token "sentiment notebook"')
    dialog.get_by_role("link", name="Cancel").click()
    expect(row(page, "sentiment notebook")).to_have_attribute("data-status", "active")

    row(page, "sentiment notebook").locator(".mltoken-revoke").click()
    expect(page.locator(".modal.show")).to_be_visible()
    page.wait_for_timeout(400)  # the dialog fades in
    shoot(page, "04-revoke-confirmation", full_page=False)
    page.locator(".modal.show").get_by_role("button", name="Revoke").click()
    expect(page.locator(".alert").first).to_contain_text('Token "sentiment notebook" revoked.')
    expect(row(page, "sentiment notebook")).to_have_attribute("data-status", "revoked")
    shoot(page, "05-revoked")
    assert service.lifecycle().show(token["token_id"], service.Actor.operator()).status == "revoked"


def test_form_errors_are_shown_and_the_expiry_date_is_bounded(
    new_page: Callable[[], Page], shoot: Callable[..., Any]
) -> None:
    user = factories.User(password=PASSWORD, image_url="")
    page = new_page()
    log_in(page, user)
    page.fill("#field-mltoken-name", "no roles")
    page.click("#mltoken-create")
    expect(page.locator(".alert-error, .alert-danger").first).to_contain_text("Choose at least one role.")
    assert page.input_value("#field-mltoken-name") == "no roles"
    latest = page.get_attribute("#field-mltoken-expires-on", "max")
    ready(page, "mltokens-expiry")
    page.fill("#field-mltoken-expires-on", latest)  # typing a date chooses "on the date:"
    expect(page.locator("#field-mltoken-expiry")).to_have_value("date")
    page.check("input[name=roles][value='model:vision:predict']")
    page.click("#mltoken-create")
    expect(page.locator("#mltoken-created")).to_contain_text("created")
    assert claims(page.input_value("#mltoken-secret"))["exp"] % 86400 == 0


def test_sysadmin_filters_by_user_revokes_one_and_all(
    new_page: Callable[[], Page], shoot: Callable[..., Any], token_of: Callable[..., dict]
) -> None:
    admin = factories.Sysadmin(password=PASSWORD, image_url="")
    ann, bob = factories.User(name="ann", image_url=""), factories.User(name="bob", image_url="")
    token_of(ann, name="ann laptop")
    soon = token_of(ann, name="ann training job", roles=["model:vision:train"], ttl="90d")
    with service.lifecycle().store.transaction() as s:  # 5 days left of 90
        s.execute(
            text(
                "UPDATE mltokens.token SET issued_at = now() - interval '85 days', "
                "expires_at = now() + interval '5 days' WHERE id = :id"
            ),
            {"id": soon["id"]},
        )
    bobs = token_of(bob, name="bob notebook")

    page = new_page()
    log_in(page, admin)
    page.goto("/ckan-admin/ml-tokens")
    for name in ("ann laptop", "ann training job", "bob notebook"):
        expect(row(page, name)).to_have_count(1)
    expect(row(page, "ann training job")).to_contain_text("expires soon")

    ready(page, "mltokens-confirm")
    row(page, "bob notebook").locator(".mltoken-revoke").click()
    page.locator(".modal.show").get_by_role("button", name="Revoke").click()
    expect(row(page, "bob notebook")).to_have_attribute("data-status", "revoked")

    page.fill("#field-user", "ann")
    page.click("#mltokens-filter button[type=submit]")
    expect(row(page, "bob notebook")).to_have_count(0)
    shoot(page, "03-sysadmin")
    ready(page, "mltokens-confirm")
    page.click("#mltokens-revoke-all")
    page.locator(".modal.show").get_by_label("Reason (optional)").fill("left the team")
    page.locator(".modal.show").get_by_role("button", name="Revoke all").click()
    expect(page.locator(".alert").first).to_contain_text("2 tokens of ann revoked.")
    for name in ("ann laptop", "ann training job"):
        expect(row(page, name)).to_have_attribute("data-status", "revoked")
    assert service.lifecycle().show(bobs["id"], service.Actor.operator()).revoke_reason is None
    assert {t.revoke_reason for t in service.lifecycle().list(service.Actor.operator()) if t.owner_name == "ann"} == {
        "left the team"
    }


HOSTILE = '<img src=x onerror="window.__xss=1">'


def no_script_ran(page: Page) -> None:
    page.wait_for_timeout(300)  # an image error handler would have fired by now
    assert page.evaluate("window.__xss") is None


def test_hostile_names_run_no_script_in_either_dialog(
    new_page: Callable[[], Page], token_of: Callable[..., dict]
) -> None:
    """Stored XSS (issue 12, item 1): a token name with markup, in the user's and the sysadmin's dialogs."""
    user = factories.User(password=PASSWORD, image_url="", fullname=HOSTILE)
    token_of(user, name=HOSTILE)
    page = new_page()
    log_in(page, user)
    ready(page, "mltokens-confirm")
    for button in (".mltoken-renew", ".mltoken-revoke"):
        row(page, HOSTILE).locator(button).click()
        expect(page.locator(".modal.show")).to_contain_text(HOSTILE)  # shown as text
        no_script_ran(page)
        page.locator(".modal.show").get_by_role("link", name="Cancel").click()
        expect(page.locator(".modal.show")).to_have_count(0)

    admin = factories.Sysadmin(password=PASSWORD, image_url="")
    page = new_page()
    log_in(page, admin)
    for address in ("/ckan-admin/ml-tokens", f"/ckan-admin/ml-tokens?user={user['name']}"):
        page.goto(address)
        ready(page, "mltokens-confirm")
        row(page, HOSTILE).locator(".mltoken-revoke").click()
        expect(page.locator(".modal.show")).to_contain_text(HOSTILE)
        no_script_ran(page)
        page.locator(".modal.show").get_by_role("link", name="Cancel").click()
    page.click("#mltokens-revoke-all")
    expect(page.locator(".modal.show")).to_contain_text(f"of {user['name']}?")
    page.locator(".modal.show").get_by_role("button", name="Revoke all").click()
    expect(row(page, HOSTILE)).to_have_attribute("data-status", "revoked")
    no_script_ran(page)


def test_a_hostile_user_filter_runs_no_script_and_offers_no_revoke_all(new_page: Callable[[], Page]) -> None:
    """Reflected XSS (issue 12, item 1): /ckan-admin/ml-tokens?user=<markup>."""
    admin = factories.Sysadmin(password=PASSWORD, image_url="")
    page = new_page()
    log_in(page, admin)
    page.goto("/ckan-admin/ml-tokens")
    page.fill("#field-user", HOSTILE)
    page.click("#mltokens-filter button[type=submit]")
    expect(page.locator(".alert").first).to_contain_text("User not found.")
    expect(page.locator("#field-user")).to_have_value(HOSTILE)
    expect(page.locator("#mltokens-revoke-all")).to_have_count(0)
    no_script_ran(page)


def test_a_double_click_on_create_makes_one_token_and_shows_it(new_page: Callable[[], Page]) -> None:
    user = factories.User(password=PASSWORD, image_url="")
    page = new_page()
    log_in(page, user)
    ready(page, "mltokens-submit-once")
    page.fill("#field-mltoken-name", "clicked twice")
    page.check(f"input[name=roles][value='{PREDICT}']")
    page.dblclick("#mltoken-create")
    expect(page.locator("#mltoken-created")).to_contain_text('Token "clicked twice" created')
    assert claims(page.input_value("#mltoken-secret"))["token_id"]
    assert [t.name for t in service.lifecycle().list(service.Actor.operator())] == ["clicked twice"]


def test_a_long_name_wraps_and_the_buttons_stay_on_screen(
    new_page: Callable[[], Page], token_of: Callable[..., dict]
) -> None:
    user = factories.User(password=PASSWORD, image_url="")
    name = "x" * 200
    token_of(user, name=name)
    page = new_page()
    log_in(page, user)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    box = row(page, name).locator(".mltoken-revoke").bounding_box()
    assert box is not None and box["x"] + box["width"] <= 1280


def test_user_rotates_a_token_and_sees_both_token_strings_states(
    new_page: Callable[[], Page], shoot: Callable[..., Any]
) -> None:
    user = factories.User(password=PASSWORD, image_url="")  # no picture from the internet
    page = new_page()
    log_in(page, user)
    page.fill("#field-mltoken-name", "k8s scorer")
    page.check(f"input[name=roles][value='{PREDICT}']")
    page.click("#mltoken-create")
    secret = page.input_value("#mltoken-secret")

    ready(page, "mltokens-confirm")
    row(page, "k8s scorer").locator(".mltoken-rotate").click()
    dialog = page.locator(".modal.show")
    expect(dialog).to_contain_text('Rotate the token "k8s scorer"?')
    expect(dialog).to_contain_text("keeps working for 15 minutes")
    dialog.get_by_role("button", name="Rotate").click()
    expect(page.locator(".alert-success").first).to_contain_text('Token "k8s scorer" rotated')
    expect(page.locator("#mltoken-previous")).to_contain_text("The previous token string keeps working until")
    rotated = page.input_value("#mltoken-secret")
    assert rotated != secret and claims(rotated)["token_id"] == claims(secret)["token_id"]
    expect(row(page, "k8s scorer").locator(".mltoken-previous")).to_contain_text("(rotated)")
    shoot(page, "06-rotated")


def test_usage_chart_notices_switch_and_unused_tokens_bulk_revoke(
    new_page: Callable[[], Page], shoot: Callable[..., Any], token_of: Callable[..., dict]
) -> None:
    """Issue 15: calls today and the 30-day chart, the per-token e-mail switch, and a sysadmin's
    bulk revoke of unused tokens after a confirmation."""
    from datetime import UTC, datetime, timedelta

    from token_service.store import UsageDaily

    user = factories.User(password=PASSWORD, image_url="")
    busy = token_of(user, name="nightly scoring")
    idle = token_of(user, name="forgotten notebook")
    today = datetime.now(UTC).date()
    with service.lifecycle().store.transaction() as s:
        for days_ago in range(30):
            s.add(UsageDaily(token_id=busy["id"], day=today - timedelta(days=days_ago), count=(days_ago * 37) % 90))
        s.execute(
            text("UPDATE mltokens.token SET created_at = now() - interval '40 days' WHERE id = :id"), {"id": idle["id"]}
        )
        s.execute(
            text("UPDATE mltokens.token SET last_used_at = now() - interval '1 day' WHERE id = :id"), {"id": busy["id"]}
        )
    page = new_page()
    log_in(page, user)
    expect(row(page, "nightly scoring").locator(".mltoken-today")).to_have_text("0 calls today")
    expect(row(page, "nightly scoring").locator("svg.mltoken-chart rect")).to_have_count(30)
    row(page, "forgotten notebook").locator(".mltoken-notices-toggle").click()
    expect(page.locator(".alert").first).to_contain_text('No more e-mails before the token "forgotten notebook"')
    expect(row(page, "forgotten notebook").locator(".mltoken-notices")).to_contain_text("off")
    shoot(page, "06-usage")
    assert service.lifecycle().show(idle["id"], service.Actor.operator()).expiry_notices is False

    admin = factories.Sysadmin(password=PASSWORD, image_url="")
    page = new_page()
    log_in(page, admin)
    page.goto("/ckan-admin/ml-tokens")
    unused = page.locator("#mltokens-unused .mltoken-unused-row")
    expect(unused).to_have_count(1)
    expect(unused).to_contain_text("forgotten notebook")
    shoot(page, "07-unused")
    page.click("#mltokens-revoke-unused")
    expect(page.locator("#mltokens-revoke-unused-list")).to_contain_text("forgotten notebook")
    assert service.lifecycle().show(idle["id"], service.Actor.operator()).status == "active"
    page.get_by_role("button", name="Revoke").click()
    expect(page.locator(".alert").first).to_contain_text("1 token revoked.")
    assert service.lifecycle().show(idle["id"], service.Actor.operator()).status == "revoked"
    assert service.lifecycle().show(busy["id"], service.Actor.operator()).status == "active"
