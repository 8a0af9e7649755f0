"""demo/ckan.py: the demo CKAN is prepared from scratch, runs, and its demo accounts can make tokens."""
from __future__ import annotations

import re
from pathlib import Path

import jwt
import requests

from demo.ckan import SYSADMIN, USER, prepare, spec, welcome
from demo.services import free_port, start
from tests.support import pg
from token_service.config import Settings
from token_service.issuers.local import LocalIssuer
from token_service.lifecycle import utcnow
from token_service.store import Store

ISSUER = "http://127.0.0.1:8901"
MODEL_API = "http://127.0.0.1:8080/v1/models/sentiment/predict"


def log_in(site_url: str, name: str, password: str) -> tuple[requests.Session, requests.Response]:
    session = requests.Session()
    form = session.get(f"{site_url}/user/login", timeout=30)
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', form.text).group(1)
    landed = session.post(f"{site_url}/user/login", timeout=30,
                          data={"login": name, "password": password, "_csrf_token": csrf})
    return session, landed


def test_demo_ckan_from_scratch_then_again(tmp_path: Path) -> None:
    with pg.database(prefix="mlt_demo_test") as db_url:
        site = prepare(db_url, issuer_url=ISSUER, passphrase="demo-pass", model_api_url=MODEL_API,
                       port=free_port(), workdir=tmp_path)
        again = prepare(db_url, issuer_url=ISSUER, passphrase="demo-pass", model_api_url=MODEL_API,
                        port=free_port(), workdir=tmp_path)
        assert again.accounts == site.accounts and set(site.accounts) == {SYSADMIN, USER}
        assert (tmp_path / "ckan-users.json").stat().st_mode & 0o077 == 0
        assert f"{USER} / {site.accounts[USER]}" in welcome(again)

        ckan = start(spec(again), tmp_path / "logs", timeout=90)
        try:
            user, landed = log_in(again.url, USER, again.accounts[USER])
            assert landed.url == f"{again.url}/user/{USER}/ml-tokens"
            csrf = re.search(r'name="_csrf_token" value="([^"]+)"', landed.text).group(1)
            nonce = re.search(r'name="mltoken_form" value="([^"]+)"', landed.text).group(1)
            made = user.post(landed.url, timeout=30, data={"_csrf_token": csrf, "mltoken_form": nonce,
                                                           "name": "demo notebook",
                                                           "expiry": "86400", "roles": "model:sentiment:predict"})
            secret = re.search(r'id="mltoken-secret"[^>]*value="([^"]+)"', made.text).group(1)
            assert MODEL_API in made.text

            store = Store(db_url)
            try:
                settings = Settings.from_mapping({"database_url": db_url, "issuer_url": ISSUER})
                keys = jwt.PyJWKSet.from_dict(LocalIssuer(settings, store, utcnow).jwks())
            finally:
                store.dispose()
            kid = jwt.get_unverified_header(secret)["kid"]
            claims = jwt.decode(secret, next(k for k in keys.keys if k.key_id == kid).key, algorithms=["RS256"],
                                audience="model-api", issuer=ISSUER)
            assert claims["owner_name"] == USER and claims["roles"] == ["model:sentiment:predict"]

            admin, _ = log_in(again.url, SYSADMIN, again.accounts[SYSADMIN])
            listing = admin.get(f"{again.url}/ckan-admin/ml-tokens", timeout=30)
            assert listing.status_code == 200 and "demo notebook" in listing.text
        finally:
            ckan.stop()
