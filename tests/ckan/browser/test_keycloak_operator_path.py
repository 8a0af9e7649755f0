"""The operator's path of docs/keycloak.md on the REAL Keycloak 26, in Chromium against a live CKAN.

`mltokens keycloak bootstrap` sets up a realm; CKAN runs on the Keycloak issuer with the secret
it printed; a user who exists in Keycloak creates a client-credentials token on the page, runs
the examples the box shows (shell and Python) through nginx and the validator to the model API,
revokes the token on the page, and the same call is refused.

The real Keycloak is the session's one (`real_keycloak_server`, tests/conftest.py): it starts
only when a test of this module is selected, once per session (docs/keycloak.md, "Tests").
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ckan.plugins.toolkit as tk
import pytest
import requests
from ckan.tests import factories
from playwright.sync_api import Page, expect

from devstack.services import ROOT, free_port, model_api_spec, nginx_spec, start, validator_spec
from testing.keycloak_server.fixtures import KeycloakServerInfo
from tests.support.stack import write_config

from ..conftest import PASSWORD, PREDICT
from .test_token_pages import clipboard, log_in, ready, row

SECRET_LINE = re.compile(r"admin_client_secret\s*=\s*(\S+)", re.IGNORECASE)
TIMEOUT = "60s"  # keycloak_timeout: a shared 2-core machine under load makes Keycloak slow, not broken


def bootstrap(kc: KeycloakServerInfo, realm: str) -> str:
    """`mltokens keycloak bootstrap --show-secret` as docs/keycloak.md has the operator run it;
    returns the issuer client's secret it prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLTOKENS_")}
    env.update(
        MLTOKENS_KEYCLOAK_SERVER_URL=kc.url,
        MLTOKENS_KEYCLOAK_REALM=realm,
        MLTOKENS_KEYCLOAK_ADMIN_PASSWORD=kc.admin_password,
        MLTOKENS_KEYCLOAK_TIMEOUT=TIMEOUT,
    )
    argv = [sys.executable, "-m", "token_service.cli", "keycloak", "bootstrap", "--admin-username", kc.admin_user]
    done = subprocess.run([*argv, "--show-secret"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    return SECRET_LINE.search(done.stdout).group(1)


@pytest.fixture
def keycloak_ckan(
    real_keycloak_server: KeycloakServerInfo, live_ckan: str, ckan_config: Any, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    """A bootstrapped realm on the real Keycloak, CKAN on the Keycloak issuer, and nginx + the
    validator (trusting the realm, reading CKAN's token store) in front of the demo model API."""
    kc = real_keycloak_server
    realm = f"ckan-{uuid.uuid4().hex[:10]}"
    secret = bootstrap(kc, realm)
    # Keycloak's `iss` is its public hostname; mltokens reaches it over the back channel (kc.url).
    issuer_url = f"{kc.public_url}/realms/{realm}"
    ports = {name: free_port() for name in ("validator", "model_api", "gateway")}
    config = write_config(
        tmp_path / "mltokens.toml",
        tk.config["sqlalchemy.url"],
        issuer_url,
        ROOT / "devstack" / "policy.yaml",
        discovery_urls=[f"{issuer_url}={kc.url}/realms/{realm}/.well-known/openid-configuration"],
        heartbeat_interval="200ms",
        max_staleness="3s",
    )
    specs = (
        validator_spec(config, ports["validator"]),
        model_api_spec(ports["model_api"]),
        nginx_spec(tmp_path, ports["gateway"], ports["validator"], ports["model_api"]),
    )
    running = []
    try:
        for spec in specs:
            running.append(start(spec, tmp_path / "logs", timeout=60))
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        ckan_config.update(
            {
                "ckanext.mltokens.issuer": "keycloak",
                "ckanext.mltokens.keycloak_server_url": kc.url,
                "ckanext.mltokens.keycloak_realm": realm,
                "ckanext.mltokens.keycloak_admin_client_secret": secret,
                "ckanext.mltokens.keycloak_timeout": TIMEOUT,
                "ckanext.mltokens.model_api_url": f"{gateway}/v1/models/sentiment/predict",
            }
        )
        yield {"admin": kc.admin(realm), "back_channel": f"{kc.url}/realms/{realm}", "gateway": gateway}
    finally:
        for service in reversed(running):
            service.stop()
        kc.admin().delete_realm(realm)


def run(argv: list[str], stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True, timeout=60)


def test_operator_path_on_real_keycloak(
    keycloak_ckan: dict[str, Any], new_page: Callable[[], Page], shoot: Callable[..., Any]
) -> None:
    user = factories.User(password=PASSWORD, image_url="")  # no picture from the internet
    admin = keycloak_ckan["admin"]
    user_id = admin.create_user({"username": user["name"], "enabled": True})
    admin.assign_realm_roles(user_id, [admin.get_realm_role(PREDICT)])

    page = new_page()
    log_in(page, user)
    expect(page.locator("#mltokens-help-client-credentials")).to_contain_text("never sent to the model API")
    page.fill("#field-mltoken-name", "nightly pipeline")
    page.select_option("#field-mltoken-kind", "client_credentials")
    page.check(f"input[name=roles][value='{PREDICT}']")
    page.click("#mltoken-create")
    box = page.locator("#mltoken-created")
    expect(box).to_contain_text('Token "nightly pipeline" created')
    client_id, secret = page.inner_text("#mltoken-client-id"), page.input_value("#mltoken-secret")
    expect(page.locator("#mltoken-cc-lifespan")).to_contain_text("Each access token lives 15 minutes")
    endpoint = f"{keycloak_ckan['back_channel']}/protocol/openid-connect/token"  # CKAN shows its own URL
    expect(page.locator("#mltoken-cc-how")).to_contain_text(endpoint)
    commands, program = page.inner_text("#mltoken-curl"), page.inner_text("#mltoken-python")
    assert secret not in commands and secret not in program and endpoint in commands and endpoint in program
    page.bring_to_front()  # copying needs a focused document
    ready(page, "copy-into-buffer")
    page.click("#mltoken-copy-curl")
    assert clipboard(page) == commands  # what the button copies is what the box shows
    listed = row(page, "nightly pipeline")
    expect(listed.locator(".mltoken-kind")).to_contain_text("client credentials")
    expect(listed.locator(".mltoken-client-id")).to_have_text(client_id)
    shoot(page, "11-keycloak-client-credentials")

    # The shell example, secret typed at its prompt: a JWT from Keycloak, then the model call
    # through nginx and the validator.
    shell = run(["bash", "-e", "-o", "pipefail", "-c", commands], stdin=secret + "\n")
    assert shell.returncode == 0, shell.stderr
    answer = json.loads(shell.stdout)
    token_id = answer["caller"]["x-auth-token-id"]
    assert answer["model"] == "sentiment" and answer["caller"]["x-auth-owner-name"] == user["name"]
    # The Python example (Authlib) with the secret in the environment.
    python = run([sys.executable, "-c", program], env={**os.environ, "ML_CLIENT_SECRET": secret})
    assert python.returncode == 0 and python.stdout.startswith("200 "), python.stdout + python.stderr
    fetched = requests.post(  # one more JWT with the shown values, to call with after the revocation
        endpoint,
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
        timeout=10,
    )
    assert fetched.status_code == 200, fetched.text
    jwt_ = fetched.json()["access_token"]

    ready(page, "mltokens-confirm")
    listed.locator(".mltoken-revoke").click()
    dialog = page.locator(".modal.show")
    dialog.locator("#field-reason").fill("pipeline retired")
    dialog.get_by_role("button", name="Revoke").click()
    expect(page.locator(".alert").first).to_contain_text('Token "nightly pipeline" revoked.')
    expect(listed).to_have_attribute("data-status", "revoked")
    expect(listed.locator(".mltoken-revoke-reason")).to_have_text("Reason: pipeline retired")

    def call() -> requests.Response:
        return requests.post(
            f"{keycloak_ckan['gateway']}/v1/models/sentiment/predict",
            headers={"Authorization": f"Bearer {jwt_}"},
            json={"text": "still there?"},
            timeout=10,
        )

    deadline = time.monotonic() + 5  # the revocation reaches the validator by LISTEN/NOTIFY
    while (refused := call()).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert refused.status_code == 401, refused.text
    assert run(["bash", "-e", "-o", "pipefail", "-c", commands], stdin=secret + "\n").returncode != 0
    assert token_id == page.locator("#mltokens-table tr[data-name='nightly pipeline']").get_attribute("id")[8:]
