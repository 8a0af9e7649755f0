"""The organization's "ML API tokens" tab in headless chromium (issue 14 items 5 and 7): an admin creates
an organization token with the organization's model roles, another admin renews, rotates and revokes it after
the first has left, and a hostile organization title runs no script."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ckan.tests import factories
from ckan.tests.helpers import call_action
from playwright.sync_api import Page, expect

from ..conftest import PASSWORD, PREDICT, claims, publish_model
from .test_token_pages import HOSTILE, log_in, no_script_ran, ready, row

TRAIN = "model:sentiment:train"


def organization(title: str, *admins: dict[str, Any]) -> dict[str, Any]:
    org = factories.Organization(
        title=title, image_url="", users=[{"name": admin["name"], "capacity": "admin"} for admin in admins]
    )
    publish_model("sentiment", "predict, train", owner_org=org["id"], private=True)
    return org


def test_admins_manage_an_organization_token_that_outlives_its_creator(
    new_page: Callable[[], Page], shoot: Callable[..., Any]
) -> None:
    ada = factories.User(password=PASSWORD, image_url="")
    bea = factories.User(password=PASSWORD, image_url="")
    org = organization(HOSTILE, ada, bea)

    page = new_page()
    log_in(page, ada)
    page.goto(f"/organization/about/{org['name']}")
    page.locator(".nav-tabs, .nav").get_by_role("link", name="ML API tokens").click()
    expect(page).to_have_url(re.compile(rf"/organization/ml-tokens/{org['name']}$"))
    expect(page.locator("#mltokens-org-title")).to_have_text(HOSTILE)  # the hostile title, as text
    no_script_ran(page)
    roles = page.locator("input[name=roles]")
    expect(roles).to_have_count(2)  # the organization's model only, not the site's other roles
    assert sorted(roles.evaluate_all("els => els.map(e => e.value)")) == [PREDICT, TRAIN]

    page.fill("#field-mltoken-name", "nightly scoring")
    page.check(f"input[name=roles][value='{PREDICT}']")
    page.click("#mltoken-create")
    expect(page.locator("#mltoken-created")).to_contain_text('Token "nightly scoring" created')
    token = claims(page.input_value("#mltoken-secret"))
    assert (token["owner"], token["owner_kind"], token["roles"]) == (org["id"], "organization", [PREDICT])
    expect(row(page, "nightly scoring")).to_have_attribute("data-status", "active")
    shoot(page, "10-organization-token-created")

    call_action("organization_member_delete", {"user": bea["name"]}, id=org["id"], username=ada["name"])  # ada leaves
    page.goto(
        f"/organization/about/{org['name']}"
    )  # no tab for her any more (the page itself: test_organization_tokens)
    expect(page.locator(f"a[href='/organization/ml-tokens/{org['name']}']")).to_have_count(0)

    other = new_page()
    log_in(other, bea)
    other.goto(f"/organization/ml-tokens/{org['name']}")
    expect(row(other, "nightly scoring")).to_have_attribute("data-status", "active")
    ready(other, "mltokens-confirm")
    row(other, "nightly scoring").locator(".mltoken-renew").click()
    expect(other.locator(".modal.show")).to_contain_text('Renew the token "nightly scoring"?')
    other.locator(".modal.show").get_by_role("button", name="Renew").click()
    expect(other.locator(".alert-success").first).to_contain_text('Token "nightly scoring" renewed')
    renewed = claims(other.input_value("#mltoken-secret"))
    assert renewed["token_id"] == token["token_id"] and renewed["jti"] != token["jti"]

    ready(other, "mltokens-confirm")
    row(other, "nightly scoring").locator(".mltoken-rotate").click()
    dialog = other.locator(".modal.show")
    expect(dialog).to_contain_text('Rotate the token "nightly scoring"?')
    dialog.get_by_role("button", name="Rotate").click()
    expect(other.locator(".alert-success").first).to_contain_text('Token "nightly scoring" rotated')
    expect(other.locator("#mltoken-previous")).to_contain_text("The previous token string keeps working until")
    rotated = claims(other.input_value("#mltoken-secret"))
    assert rotated["token_id"] == token["token_id"] and rotated["jti"] not in (token["jti"], renewed["jti"])
    expect(row(other, "nightly scoring").locator(".mltoken-previous")).to_contain_text("(rotated)")

    ready(other, "mltokens-confirm")
    row(other, "nightly scoring").locator(".mltoken-revoke").click()
    dialog = other.locator(".modal.show")
    expect(dialog).to_contain_text('Revoke the token "nightly scoring"')
    dialog.get_by_label("Reason (optional)").fill("ada left")
    dialog.get_by_role("button", name="Revoke").click()
    expect(other.locator(".alert").first).to_contain_text('Token "nightly scoring" revoked.')
    expect(row(other, "nightly scoring")).to_have_attribute("data-status", "revoked")
    shoot(other, "11-organization-token-revoked")
