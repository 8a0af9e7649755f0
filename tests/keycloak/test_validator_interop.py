"""Tokens from the Keycloak issuer pass the validator's real pipeline, keys by discovery."""
from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text

from tests.keycloak.conftest import Realm
from token_service.issuers import Owner
from token_service.lifecycle import Actor, Lifecycle
from token_service.validator.decision import Decider, Decision
from token_service.validator.keys import KeyCache
from token_service.validator.policy import Policy
from token_service.validator.revocations import LOAD_SQL, RevocationSet
from token_service.validator.settings import ValidatorSettings

POLICY = Path(__file__).resolve().parents[2] / "demo" / "policy.yaml"
ALICE = Owner("ckan-id-alice", "alice")
PREDICT = "model:sentiment:predict"


def decider_for(realm: Realm, kc_lifecycle: Lifecycle, revocations: RevocationSet) -> Decider:
    vs = ValidatorSettings.from_mapping(
        {"policy_file": str(POLICY), "issuers": kc_lifecycle.issuer.issuer_url}, realm.settings)
    keys = KeyCache(vs.issuers, vs.jwks_refresh_interval, vs.jwks_min_refetch_interval, vs.jwks_timeout)
    assert asyncio.run(keys.refresh(vs.issuers[0]))
    return Decider(vs, keys, revocations, Policy.load(vs.policy_file))


def load(store, revocations: RevocationSet) -> None:
    with store.engine.connect() as conn:
        revocations.replace(conn.execute(text(LOAD_SQL)).all(), time.time())
    revocations.confirmed_at = time.monotonic()


def test_keycloak_token_allowed_then_revoked(realm: Realm, kc_lifecycle: Lifecycle, store):
    realm.add_user("alice", (PREDICT, "model:sentiment:train"))
    issued = kc_lifecycle.create(ALICE, "nb", [PREDICT], timedelta(hours=1))
    revocations = RevocationSet()
    load(store, revocations)
    decider = decider_for(realm, kc_lifecycle, revocations)

    allowed = decider.decide("POST", "/v1/models/sentiment/predict", issued.secret)
    assert isinstance(allowed, Decision) and allowed.status == 200, allowed
    headers = dict(allowed.headers)
    assert headers["x-auth-token-id"] == issued.info.id and headers["x-auth-owner"] == ALICE.id
    assert PREDICT in headers["x-auth-roles"]
    # realm_access.roles carries only what was granted to this token's client, not all of alice's roles
    assert decider.decide("POST", "/v1/models/sentiment/train", issued.secret).status == 403

    kc_lifecycle.revoke(issued.info.id, Actor(ALICE.id, ALICE.name))
    load(store, revocations)
    assert decider.decide("POST", "/v1/models/sentiment/predict", issued.secret).status == 401
