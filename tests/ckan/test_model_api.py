"""Models are datasets (docs/models-in-the-catalogue.md): the `model_id` / `model_operations`
fields, their validation, and the dataset page's "Model API" section."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

import pytest
from ckan.plugins.toolkit import ValidationError
from ckan.tests import factories
from ckan.tests.helpers import call_action

from .conftest import Visitor, page_url, publish_model

pytestmark = pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens")

GATEWAY = "http://models.test"  # test.ini's model_api_url, before /v1/models/
SENTIMENT = ["model:sentiment:predict", "model:sentiment:train"]


def model_dataset(model_id: str, model_operations: str) -> dict[str, Any]:
    return publish_model(model_id, model_operations, title="Sentiment model", owner_org=factories.Organization()["id"])


def test_the_dataset_page_shows_the_model_api_with_the_viewers_own_tokens(
    visit: Callable[[dict[str, Any]], Visitor], people: dict, token_of: Callable[..., dict[str, Any]]
) -> None:
    dataset = model_dataset(model_id="sentiment", model_operations="predict, train")
    reaching = token_of(people["ann"], name="ann's notebook", roles=["model:sentiment:predict"])
    token_of(people["ann"], name="ann's other model", roles=["model:vision:predict"])
    token_of(people["bob"], name="bob's notebook", roles=["model:sentiment:predict"])

    found = call_action("package_search", fq="extras_model_id:*", rows=1000)["results"]
    assert dataset["id"] in [d["id"] for d in found]  # docs: every model dataset, through Solr
    assert call_action("package_search", fq="extras_model_id:sentiment", rows=1000)["count"] >= 1

    page = visit(people["ann"]).get(f"/dataset/{dataset['name']}").body
    section = page[page.index('id="model-api"') :]
    assert "Model API" in section
    assert f"POST {GATEWAY}/v1/models/sentiment/predict" in section
    assert f"POST {GATEWAY}/v1/models/sentiment/train" in section
    tokens = re.search(r'<ul id="mltokens-model-tokens">(.*?)</ul>', section, re.S).group(1)
    assert f'data-token-id="{reaching["id"]}"' in tokens and "ann's notebook" in html.unescape(tokens)
    assert "other model" not in tokens and "bob" not in tokens
    create = html.unescape(re.search(r'id="mltokens-model-create" href="([^"]+)"', section).group(1))
    assert create == f"{page_url(people['ann'])}?roles={SENTIMENT[0]}&roles={SENTIMENT[1]}"

    bob = visit(people["bob"])
    assert "You have no active token for this model." not in bob.get(f"/dataset/{dataset['name']}").body
    call_action(
        "mltoken_revoke_all", context={"user": people["root"]["name"], "ignore_auth": False}, user=people["bob"]["name"]
    )
    assert "You have no active token for this model." in bob.get(f"/dataset/{dataset['name']}").body


def test_the_create_link_preselects_the_models_roles(visit: Callable, people: dict) -> None:
    ann = visit(people["ann"])
    form = ann.get(f"{page_url(people['ann'])}?roles=model:sentiment:predict&roles=model:nope:x&roles=<b>").body
    checked = re.findall(r'<input[^>]*value="([^"]+)"[^>]*checked', form)
    assert checked == ["model:sentiment:predict"]
    assert 'value="model:nope:x"' not in form and "<b>" not in form


def test_anonymous_visitors_see_the_endpoints_and_a_login_link(app: Any) -> None:
    dataset = model_dataset(model_id="vision", model_operations="predict")
    section = app.get(f"/dataset/{dataset['name']}").body.split('id="model-api"', 1)[1]
    assert f"POST {GATEWAY}/v1/models/vision/predict" in section
    assert "mltokens-model-create" not in section and "/user/login" in section


def test_a_dataset_without_model_fields_has_no_model_api_section(app: Any) -> None:
    dataset = factories.Dataset(owner_org=factories.Organization()["id"])
    assert 'id="model-api"' not in app.get(f"/dataset/{dataset['name']}").body


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model_id": "../admin", "model_operations": "predict"}, "model_id"),
        ({"model_id": "..", "model_operations": "predict"}, "model_id"),
        ({"model_id": "a/b", "model_operations": "predict"}, "model_id"),
        ({"model_id": "sentiment"}, "model_operations"),
        ({"model_id": "sentiment", "model_operations": " , "}, "model_operations"),
        ({"model_id": "sentiment", "model_operations": "predict, Train"}, "model_operations"),
        ({"model_id": "sentiment", "model_operations": "predict:all"}, "model_operations"),
        ({"model_operations": "predict"}, "model_id"),
    ],
)
def test_bad_model_fields_are_a_validation_error_and_nothing_is_saved(fields: dict[str, str], field: str) -> None:
    org = factories.Organization()
    name = f"bad-model-{abs(hash(str(fields))) % 10**8}"
    extras = [{"key": key, "value": value} for key, value in fields.items()]
    with pytest.raises(ValidationError) as raised:
        call_action("package_create", name=name, owner_org=org["id"], extras=extras)
    assert field in raised.value.error_dict
    assert call_action("package_search", q=f"name:{name}")["count"] == 0

    good = call_action("package_create", name=f"{name}-fixed", owner_org=org["id"])
    with pytest.raises(ValidationError) as raised:
        call_action("package_patch", id=good["id"], extras=extras)
    assert field in raised.value.error_dict
    assert call_action("package_show", id=good["id"])["extras"] == []


def test_scheming_style_top_level_fields_are_read_too() -> None:
    """ckanext-scheming shows schema fields top-level; the section reads them so as well as extras."""
    from ckanext.mltokens import catalogue

    api = catalogue.model_api({"model_id": "vision", "model_operations": ["predict", "train", "predict"]})
    assert api is not None and api.roles == ("model:vision:predict", "model:vision:train")
    assert catalogue.errors({"model_id": "vision", "model_operations": ["predict", "BAD"]})
    assert catalogue.model_api({"extras": [{"key": "model_id", "value": ""}]}) is None


def test_the_dataset_forms_custom_fields_show_a_bad_model_id_as_a_form_error(visit: Callable, people: dict) -> None:
    org = factories.Organization()
    root = visit(people["root"])
    page = root.post(
        "/dataset/new",
        {
            "name": "form-model",
            "title": "Form model",
            "owner_org": org["id"],
            "extras__0__key": "model_id",
            "extras__0__value": "../admin",
            "extras__1__key": "model_operations",
            "extras__1__value": "predict",
            "save": "continue",
        },
        csrf_from="/dataset/new",
    )
    assert "A model id is 1 to 100 letters" in page.body
    assert call_action("package_search", q="name:form-model", include_drafts=True)["count"] == 0
