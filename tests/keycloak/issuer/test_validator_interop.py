"""Tokens from the Keycloak issuer pass the validator's real pipeline, keys by discovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
import requests
from sqlalchemy import text

from tests.keycloak.conftest import BACKENDS, Realm
from tests.support.clock import Clock
from token_service.issuers import Owner
from token_service.lifecycle import Actor, Lifecycle
from token_service.validator.decision import Decider, Decision, NeedKeys
from token_service.validator.jwks import KeyCache, fetch_json
from token_service.validator.policy import Policy
from token_service.validator.revocations import LOAD_SQL, RevocationSet
from token_service.validator.settings import ValidatorSettings
from token_service.verify import verify

POLICY = Path(__file__).resolve().parents[3] / "devstack" / "policy.yaml"
ALICE = Owner("ckan-id-alice", "alice")
AS_ALICE = Actor(ALICE.id, ALICE.name)
PREDICT = "model:sentiment:predict"


def decider_for(
    realm: Realm, kc_lifecycle: Lifecycle, revocations: RevocationSet, wall: Callable[[], float] = time.time
) -> Decider:
    vs = ValidatorSettings.from_mapping(
        {"policy_file": str(POLICY), "issuers": kc_lifecycle.issuer.issuer_url}, realm.settings
    )
    keys = KeyCache(
        vs.issuers, vs.jwks_refresh_interval, vs.jwks_min_refetch_interval, vs.jwks_timeout, discovery=vs.discovery
    )
    assert asyncio.run(keys.refresh(vs.issuers[0]))
    return Decider(vs, keys, revocations, Policy.load(vs.policy_file), wall=wall)


def load(store, revocations: RevocationSet, at: float | None = None) -> None:
    """A validator's full load, as PostgreSQL would answer it at epoch time `at` (default: now)."""
    assert "now()" in LOAD_SQL
    query, params = (
        (LOAD_SQL, {})
        if at is None
        else (LOAD_SQL.replace("now()", "CAST(:at AS timestamptz)"), {"at": datetime.fromtimestamp(at, UTC)})
    )
    with store.engine.connect() as conn:
        revocations.replace(conn.execute(text(query), params).all(), time.time() if at is None else at)
    revocations.confirmed_at = time.monotonic()


def restarted(realm: Realm, kc_lifecycle: Lifecycle, at: float) -> Decider:
    """A validator started afresh at epoch time `at`: its own full load, an empty token cache."""
    revocations = RevocationSet()
    load(kc_lifecycle.store, revocations, at)
    return decider_for(realm, kc_lifecycle, revocations, wall=lambda: at)


def fetch(kc_lifecycle: Lifecycle, client_id: str, secret: str) -> requests.Response:
    """What a user's OAuth2 client does with a client-credentials token: the standard grant,
    client authenticated with HTTP Basic (client_secret_basic)."""
    return requests.post(
        f"{kc_lifecycle.issuer.issuer_url}/protocol/openid-connect/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
        timeout=5,
    )


def status(decider: Decider, token: str) -> tuple[int, str]:
    decision = decider.decide("POST", "/v1/models/sentiment/predict", token)
    assert isinstance(decision, Decision), decision
    return decision.status, decision.reason


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


def late_client_credentials_token(realm: Realm, kc_lifecycle: Lifecycle, clock: Clock) -> tuple[str, str, float]:
    """A 1-day client-credentials token created (by the lifecycle's clock) so that it expires
    30 s from now, and a JWT fetched with it now, as Keycloak mints it (real time).
    Returns (token id, JWT, the token's expiry as epoch seconds)."""
    realm.add_user("alice", (PREDICT,))
    clock.now = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1) + timedelta(seconds=30)
    issued = kc_lifecycle.create(ALICE, "pipeline", [PREDICT], timedelta(days=1), kind="client_credentials")
    got = fetch(kc_lifecycle, issued.info.client_id, issued.secret)
    assert got.status_code == 200, got.text
    return issued.info.id, got.json()["access_token"], issued.info.expires_at.timestamp()


def test_a_jwt_fetched_just_before_expiry_does_not_outlive_the_token(
    realm: Realm, kc_lifecycle: Lifecycle, clock: Clock
):
    """issue 12: a JWT fetched with the id and secret lived a whole TTL past the token's expiry."""
    token_id, token, expires = late_client_credentials_token(realm, kc_lifecycle, clock)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 900  # client_credentials_lifespan (15m), not the token's whole day
    assert claims["token_exp"] == expires and claims["exp"] > expires  # Keycloak's exp alone would outlive it
    leeway = realm.settings.leeway.total_seconds()
    now = [time.time()]
    decider = decider_for(realm, kc_lifecycle, _loaded(kc_lifecycle), wall=lambda: now[0])
    assert status(decider, token) == (200, "allowed")
    now[0] = expires + leeway - 1
    assert status(decider, token) == (200, "allowed")  # the same leeway as `exp`
    now[0] = expires + leeway
    assert status(decider, token) == (401, "expired")  # cached or not
    assert status(restarted(realm, kc_lifecycle, expires + 600), token) == (401, "expired")
    # `mltokens check` (the reference path) agrees
    verdict = verify(
        token,
        realm.settings,
        kc_lifecycle.issuer.jwks(),
        kc_lifecycle.store,
        lambda: datetime.fromtimestamp(expires + leeway + 1, UTC),
        issuer_url=kc_lifecycle.issuer.issuer_url,
    )
    assert not verdict.valid and "expired" in verdict.reason


def test_a_revoked_jwt_stays_refused_after_expiry_across_validator_restarts(
    realm: Realm, kc_lifecycle: Lifecycle, clock: Clock
):
    """issue 12: revoked, then accepted again once the revocation row expired and a validator reloaded."""
    token_id, token, expires = late_client_credentials_token(realm, kc_lifecycle, clock)
    kc_lifecycle.revoke(token_id, AS_ALICE, "leaked")
    leeway = realm.settings.leeway.total_seconds()
    for at in (time.time(), expires + 5, expires + leeway - 1, expires + leeway, expires + 47, expires + 86400):
        assert status(restarted(realm, kc_lifecycle, at), token)[0] == 401, at


def test_renewal_refuses_jwts_fetched_with_the_old_secret(realm: Realm, kc_lifecycle: Lifecycle, clock: Clock):
    """issue 12: renewing (the answer to a leaked secret) left the old secret's JWTs valid."""
    realm.add_user("alice", (PREDICT,))
    issued = kc_lifecycle.create(ALICE, "pipeline", [PREDICT], timedelta(days=1), kind="client_credentials")
    client_id = issued.info.client_id
    leaked = fetch(kc_lifecycle, client_id, issued.secret).json()["access_token"]
    revocations = _loaded(kc_lifecycle)
    decider = decider_for(realm, kc_lifecycle, revocations)
    assert status(decider, leaked) == (200, "allowed")

    renewed = kc_lifecycle.renew(issued.info.id, AS_ALICE, timedelta(hours=2))
    assert fetch(kc_lifecycle, client_id, issued.secret).status_code == 401  # the old secret is dead
    fresh = fetch(kc_lifecycle, client_id, renewed.secret).json()["access_token"]

    load(kc_lifecycle.store, revocations)
    assert status(decider, leaked) == (401, "revoked")  # cached, then refused
    assert status(decider, fresh) == (200, "allowed")
    fresh_claims = jwt.decode(fresh, options={"verify_signature": False})
    assert fresh_claims["token_exp"] == int(renewed.info.expires_at.timestamp())  # the renewed expiry
    assert fresh_claims["exp"] - fresh_claims["iat"] == 900
    after_restart = restarted(realm, kc_lifecycle, time.time())
    assert status(after_restart, leaked) == (401, "revoked") and status(after_restart, fresh) == (200, "allowed")
    verdict = verify(
        leaked,
        realm.settings,
        kc_lifecycle.issuer.jwks(),
        kc_lifecycle.store,
        clock,
        issuer_url=kc_lifecycle.issuer.issuer_url,
    )
    assert not verdict.valid and "renewed" in verdict.reason

    # a revocation refuses every JWT of the token, whichever secret fetched it
    kc_lifecycle.revoke(issued.info.id, AS_ALICE)
    assert status(restarted(realm, kc_lifecycle, time.time()), fresh) == (401, "revoked")


def _loaded(kc_lifecycle: Lifecycle) -> RevocationSet:
    revocations = RevocationSet()
    load(kc_lifecycle.store, revocations)
    return revocations


@pytest.mark.parametrize("keycloak_server", BACKENDS[1:], indirect=True)  # only the real one has a hostname
def test_keycloak_with_a_public_hostname_is_trusted_by_iss_and_read_over_the_back_channel(
    realm: Realm, kc_lifecycle: Lifecycle, keycloak_server
):
    """deploy/compose.yml's Keycloak (KC_HOSTNAME a public URL, KC_HOSTNAME_BACKCHANNEL_DYNAMIC): the
    issuer calls it at one URL, users fetch JWTs at another, and every token names the public one."""
    back, public = keycloak_server.url, keycloak_server.public_url
    assert back != public
    iss = f"{public}/realms/{realm.name}"
    realm.add_user("alice", (PREDICT,))
    minted = kc_lifecycle.create(ALICE, "nb", [PREDICT], timedelta(hours=1))  # over the back channel
    assert minted.secret.startswith("mlt_")  # handed out with the prefix; the JWT after it names the public iss
    assert jwt.decode(minted.secret.removeprefix("mlt_"), options={"verify_signature": False})["iss"] == iss
    pipeline = kc_lifecycle.create(ALICE, "laptop", [PREDICT], timedelta(hours=1), kind="client_credentials")
    laptop = requests.post(  # a user's OAuth2 client at the public URL
        f"{iss}/protocol/openid-connect/token",
        data={"grant_type": "client_credentials"},
        auth=(pipeline.info.client_id, pipeline.secret),
        timeout=5,
    )
    assert laptop.status_code == 200, laptop.text
    fetched_jwt = laptop.json()["access_token"]
    assert jwt.decode(fetched_jwt, options={"verify_signature": False})["iss"] == iss

    # The validator from the core settings alone: it trusts the public `iss` and reads keys at `back`.
    vs = ValidatorSettings.from_mapping({"policy_file": str(POLICY)}, realm.settings)
    assert vs.issuers == (iss,)
    assert vs.discovery == {iss: f"{back}/realms/{realm.name}/.well-known/openid-configuration"}
    fetched: list[str] = []

    def recorded(url: str, timeout: float) -> dict:
        fetched.append(url)
        return fetch_json(url, timeout)

    keys = KeyCache(vs.issuers, 300, 30, vs.jwks_timeout, fetch=recorded, discovery=vs.discovery)
    assert asyncio.run(keys.refresh(iss))
    assert len(fetched) == 2 and all(url.startswith(f"{back}/realms/{realm.name}/") for url in fetched), fetched
    decider = Decider(vs, keys, _loaded(kc_lifecycle), Policy.load(vs.policy_file))
    assert status(decider, minted.secret) == (200, "allowed")
    assert status(decider, fetched_jwt) == (200, "allowed")
    # Trusting the back-channel URL instead cannot work: Keycloak's discovery names the public issuer.
    wrong = KeyCache((f"{back}/realms/{realm.name}",), 300, 30, vs.jwks_timeout)
    assert not asyncio.run(wrong.refresh(f"{back}/realms/{realm.name}"))


@pytest.mark.parametrize("keycloak_server", BACKENDS[1:], indirect=True)  # the test server has no key providers
def test_a_key_rotated_in_keycloak_is_picked_up_by_the_validator(realm: Realm, kc_lifecycle: Lifecycle, store):
    realm.add_user("alice", (PREDICT,))
    before = kc_lifecycle.create(ALICE, "before", [PREDICT], timedelta(hours=1))
    vs = ValidatorSettings.from_mapping(
        {"policy_file": str(POLICY), "issuers": kc_lifecycle.issuer.issuer_url}, realm.settings
    )
    keys = KeyCache(vs.issuers, vs.jwks_refresh_interval, 0, vs.jwks_timeout, discovery=vs.discovery)
    assert asyncio.run(keys.refresh(vs.issuers[0]))
    decider = Decider(vs, keys, _loaded(kc_lifecycle), Policy.load(vs.policy_file))
    assert status(decider, before.secret) == (200, "allowed")

    # An operator rotates: a new RSA key of higher priority signs from now on.
    realm.admin.create_component(
        {
            "name": "rotated",
            "providerId": "rsa-generated",
            "providerType": "org.keycloak.keys.KeyProvider",
            "parentId": realm.admin.get_realm(realm.name)["id"],
            "config": {"priority": ["1000"]},
        }
    )
    after = kc_lifecycle.create(ALICE, "after", [PREDICT], timedelta(hours=1))
    kids = (jwt.get_unverified_header(t.secret.removeprefix("mlt_"))["kid"] for t in (after, before))
    assert next(kids) != next(kids)
    first = decider.decide("POST", "/v1/models/sentiment/predict", after.secret)
    assert isinstance(first, NeedKeys)  # what the validator's app answers by refetching the JWKS
    assert asyncio.run(keys.refetch_for_unknown_kid(first.issuer))
    assert status(decider, after.secret) == (200, "allowed")
    assert status(decider, before.secret) == (200, "allowed")  # the old key still verifies its tokens
