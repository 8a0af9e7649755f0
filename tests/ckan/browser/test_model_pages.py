"""Models in the catalogue, in headless chromium: the dataset page's Model API section and the
token form's role picker grouped by model (roles that follow CKAN's authorization)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from ckan.tests import factories
from ckan.tests.helpers import call_action
from playwright.sync_api import Dialog, Page, expect

from ..conftest import PASSWORD, claims
from .test_token_pages import log_in

pytestmark = pytest.mark.ckan_config("ckanext.mltokens.access_mode", "ckan")

HOSTILE = "<img src=x onerror=alert(1)>\"'&lt;Model"


def publish(org: dict[str, Any], title: str, private: bool) -> tuple[dict[str, Any], str]:
    model_id = f"m-{uuid.uuid4().hex[:8]}"
    extras = [{"key": "model_id", "value": model_id}, {"key": "model_operations", "value": "predict, train"}]
    return factories.Dataset(owner_org=org["id"], title=title, private=private, extras=extras), model_id


def no_dialogs(page: Page) -> list[str]:
    """Dialogs the page opened (an executed alert from a hostile title would land here)."""
    opened: list[str] = []

    def record(dialog: Dialog) -> None:
        opened.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    return opened


def test_a_member_creates_a_token_from_a_private_models_dataset_page(
    new_page: Callable[[], Page], shoot: Callable[..., Any]
) -> None:
    org = factories.Organization(image_url="")
    dataset, model_id = publish(org, "Churn model", private=True)
    user = factories.User(password=PASSWORD, image_url="")
    call_action("organization_member_create", id=org["id"], username=user["name"], role="member")
    page = new_page()
    log_in(page, user)

    page.goto(f"/dataset/{dataset['name']}")
    section = page.locator("#model-api")
    expect(section).to_contain_text(f"/v1/models/{model_id}/predict")
    expect(section).to_contain_text(f"model:{model_id}:train")
    expect(page.locator("#mltokens-model-no-tokens")).to_be_visible()
    shoot(page, "model-api-section")
    page.click("#mltokens-model-create")

    group = page.locator(f".mltoken-role-group[data-model-id='{model_id}']")
    expect(group).to_contain_text("Churn model")
    expect(group.locator(f"input[value='model:{model_id}:predict']")).to_be_checked()
    expect(group.locator(f"input[value='model:{model_id}:train']")).to_have_count(0)  # a member may not train
    page.fill("#field-mltoken-name", "churn notebook")
    page.click("#mltoken-create")
    expect(page.locator("#mltoken-created")).to_contain_text('Token "churn notebook" created')
    assert claims(page.input_value("#mltoken-secret"))["roles"] == [f"model:{model_id}:predict"]

    page.goto(f"/dataset/{dataset['name']}")
    expect(page.locator("#mltokens-model-tokens")).to_contain_text("churn notebook")


def test_the_role_picker_groups_roles_by_model_under_escaped_titles(
    new_page: Callable[[], Page], shoot: Callable[..., Any]
) -> None:
    org, elsewhere = factories.Organization(image_url=""), factories.Organization(image_url="")
    mine, mine_id = publish(org, HOSTILE, private=True)
    public, public_id = publish(elsewhere, "Public vision model", private=False)
    _, hidden_id = publish(elsewhere, "Hidden model", private=True)
    user = factories.User(password=PASSWORD, image_url="")
    call_action("organization_member_create", id=org["id"], username=user["name"], role="editor")
    page = new_page()
    dialogs = no_dialogs(page)
    log_in(page, user)

    picker = page.locator("#mltoken-roles")
    own = picker.locator(f".mltoken-role-group[data-model-id='{mine_id}']")
    expect(own.locator("a")).to_have_text(HOSTILE)  # the title as text, not markup
    expect(own.locator("a")).to_have_attribute("href", f"/dataset/{mine['name']}")
    expect(own.locator("input[name=roles]")).to_have_count(2)  # an editor: predict and train
    other = picker.locator(f".mltoken-role-group[data-model-id='{public_id}']")
    expect(other).to_contain_text("Public vision model")
    expect(other.locator("input[name=roles]")).to_have_count(1)  # public: predict only
    expect(picker.locator(f".mltoken-role-group[data-model-id='{hidden_id}']")).to_have_count(0)
    expect(picker).not_to_contain_text("Hidden model")
    assert page.locator("img[src=x]").count() == 0
    shoot(page, "grouped-role-picker")

    page.fill("#field-mltoken-name", "two models")
    own.locator(f"input[value='model:{mine_id}:train']").check()
    other.locator("input[name=roles]").check()
    page.click("#mltoken-create")
    expect(page.locator("#mltoken-created")).to_contain_text('Token "two models" created')
    assert claims(page.input_value("#mltoken-secret"))["roles"] == sorted(
        [f"model:{mine_id}:train", f"model:{public_id}:predict"]
    )
    assert dialogs == []
