"""CKAN's search against the session's real Solr 9 (tests/ckan/solr_session.py): datasets are
indexed when created, package_search finds them, and the pages that search answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from ckan.tests import factories
from ckan.tests.helpers import call_action

from .conftest import PASSWORD

pytestmark = pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens")


def test_a_created_dataset_is_indexed_and_found() -> None:
    org = factories.Organization()
    dataset = factories.Dataset(
        owner_org=org["id"],
        title="Sentiment of product reviews",
        notes="A transformer fine-tuned on reviews",
        tags=[{"name": "nlp"}],
    )

    by_word = call_action("package_search", q="reviews")
    assert dataset["id"] in [found["id"] for found in by_word["results"]]
    by_tag = call_action("package_search", fq="tags:nlp", include_private=False)
    assert [found["name"] for found in by_tag["results"]] == [dataset["name"]]
    # one word of letters only, which no dataset of the session contains (a phrase matches other
    # tests' Faker text, and Solr splits a hex string into single letters and digits)
    nothing = call_action("package_search", q="quuxzorbfrumious")
    assert nothing["count"] == 0, [(r["name"], r["title"], r.get("notes")) for r in nothing["results"]]


def test_pages_that_search_answer(app: Any, visit: Callable[[dict[str, Any]], Any]) -> None:
    """Home, /dataset, the dataset page, /organization and the user page were 500s without Solr."""
    owner = factories.User(password=PASSWORD)
    org = factories.Organization(users=[{"name": owner["name"], "capacity": "admin"}])
    dataset = factories.Dataset(owner_org=org["id"], title="Vision model card", user=owner)

    assert app.get("/").status_code == 200
    listing = app.get("/dataset", query_string={"q": "vision"})
    assert dataset["name"] in listing.body and "Vision model card" in listing.body
    assert "Vision model card" in app.get(f"/dataset/{dataset['name']}").body
    assert org["name"] in app.get("/organization", query_string={"q": org["name"]}).body
    assert dataset["name"] in app.get(f"/organization/{org['name']}").body
    assert dataset["name"] in app.get(f"/user/{owner['name']}").body
    assert dataset["name"] in visit(owner).get(f"/user/{owner['name']}").body
