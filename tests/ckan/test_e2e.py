"""End to end: a token made by `mltoken_create` opens the demo model API behind nginx + the validator;
after `mltoken_revoke` the same request is a 401."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import pg
from tests.support.stack import PASSPHRASE, Stack
from token_service.store import Store

pytestmark = pytest.mark.usefixtures("with_plugins", "non_clean_db")


@pytest.fixture
def stack(tmp_path: Path, ckan_config: Any) -> Iterator[Stack]:
    """issuer + validator + nginx + model API on their own token store, which CKAN is pointed at."""
    with pg.database(prefix="mlt_ckan_e2e") as db_url:
        store = Store(db_url)
        store.upgrade()
        store.dispose()
        with Stack(db_url, tmp_path, gateway="nginx") as running:
            ckan_config["ckanext.mltokens.database_url"] = db_url
            ckan_config["ckanext.mltokens.issuer_url"] = running.issuer_url
            ckan_config["ckanext.mltokens.key_passphrase"] = PASSPHRASE
            ckan_config["ckanext.mltokens.model_api_url"] = running.gateway_url + "/v1/models/sentiment/predict"
            yield running


def predict(stack: Stack, token: str) -> requests.Response:
    return requests.post(
        f"{stack.gateway_url}/v1/models/sentiment/predict",
        timeout=10,
        headers={"Authorization": f"Bearer {token}"},
        json={"text": "what a great day"},
    )


def test_created_token_is_accepted_and_refused_once_revoked(
    stack: Stack, act: Callable[..., Any], user: dict[str, Any]
) -> None:
    created = act("mltoken_create", user["name"], name="e2e", roles=["model:sentiment:predict"], ttl="1h")

    accepted = predict(stack, created["token"])
    assert accepted.status_code == 200, accepted.text
    assert predict(stack, "not-a-token").status_code == 401

    act("mltoken_revoke", user["name"], id=created["id"])
    deadline = time.monotonic() + 5  # revocations reach the validator by LISTEN/NOTIFY
    while (refused := predict(stack, created["token"])).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
