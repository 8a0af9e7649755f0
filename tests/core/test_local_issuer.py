"""Local issuer: keys, rotation, the published discovery document and JWKS."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import jwt
import pytest
import requests
from sqlalchemy import text

from tests.conftest import PASSPHRASE
from tests.support.clock import Clock
from token_service import errors
from token_service.issuers import Owner
from token_service.issuers.local import LocalIssuer
from token_service.issuers.local_http import make_server
from token_service.lifecycle import Actor, Lifecycle
from token_service.verify import verify

ALICE = Owner("u-alice", "alice")
ROLE = "model:vision:predict"


@pytest.fixture
def served(issuer: LocalIssuer, settings) -> Iterator[str]:
    """The issuer's endpoints on a real socket; yields the discovery URL."""
    server = make_server(issuer, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # issuer_url has a path (/local): the server serves under it, whatever the host.
    yield f"http://127.0.0.1:{server.server_port}/local/.well-known/openid-configuration"
    server.shutdown()
    server.server_close()


def test_tokens_verify_with_plain_pyjwt_against_the_published_jwks(lifecycle: Lifecycle, served: str, settings):
    issued = lifecycle.create(ALICE, "t", [ROLE])
    discovery = requests.get(served, timeout=5).json()
    assert discovery["issuer"] == settings.issuer_url
    jwks_url = served.replace("/.well-known/openid-configuration", "/jwks")
    assert discovery["jwks_uri"] == settings.issuer_url + "/jwks"
    client = jwt.PyJWKClient(jwks_url)
    bare = issued.secret.removeprefix("mlt_")
    key = client.get_signing_key_from_jwt(bare)
    claims = jwt.decode(bare, key, algorithms=["RS256"], audience="model-api", issuer=settings.issuer_url)
    assert claims["token_id"] == issued.info.id and claims["roles"] == [ROLE]
    for required in ("iss", "aud", "sub", "owner", "token_id", "jti", "iat", "exp"):
        assert required in claims
    assert requests.get(served.replace("/.well-known/openid-configuration", "/nope"), timeout=5).status_code == 404


def test_jwks_holds_no_private_material(issuer: LocalIssuer):
    for key in issuer.jwks()["keys"]:
        assert set(key) == {"kty", "n", "e", "kid", "alg", "use"}


def test_private_keys_are_encrypted_at_rest(issuer: LocalIssuer, store):
    with store.engine.connect() as conn:
        blob = conn.execute(text("SELECT private_key FROM mltokens.signing_key")).scalar()
    assert b"ENCRYPTED PRIVATE KEY" in bytes(blob)


def test_rotation_keeps_old_tokens_verifiable_until_they_expire(
    lifecycle: Lifecycle, issuer, settings, store, clock: Clock
):
    old = lifecycle.create(ALICE, "old", [ROLE], timedelta(days=10))
    clock.advance(timedelta(minutes=1))
    issuer.keys.rotate(clock())
    new = lifecycle.create(ALICE, "new", [ROLE], timedelta(days=10))
    assert jwt.get_unverified_header(old.secret[4:])["kid"] != jwt.get_unverified_header(new.secret[4:])["kid"]
    now = lambda: clock()  # noqa: E731
    for issued in (old, new):
        assert verify(issued.secret, settings, issuer.jwks(), store, now).valid
    states = [k.state(clock()) for k in issuer.keys.list()]
    assert states == ["current", "retired"]

    # Past the longest possible lifetime of anything the old key signed, it leaves the JWKS.
    clock.advance(settings.max_ttl + timedelta(seconds=1))
    assert [k.state(clock()) for k in issuer.keys.list()] == ["current", "expired"]
    assert len(issuer.jwks()["keys"]) == 1
    assert issuer.prune(clock()) == 1
    assert len(issuer.keys.list()) == 1


def test_signing_needs_a_key_and_the_right_passphrase(settings, store, clock: Clock):
    bare = LocalIssuer(settings, store, clock)
    lifecycle = Lifecycle(settings, store, bare, clock)
    with pytest.raises(errors.IssuerUnavailable):
        lifecycle.create(ALICE, "t", [ROLE])
    bare.keys.rotate(clock())
    wrong = LocalIssuer(settings.replace(key_passphrase="not-" + PASSPHRASE), store, clock)
    with pytest.raises(errors.ConfigError):
        Lifecycle(settings, store, wrong, clock).create(ALICE, "t", [ROLE])
    nopass = LocalIssuer(settings.replace(key_passphrase=""), store, clock)
    with pytest.raises(errors.ConfigError):
        nopass.keys.rotate(clock())


def test_verify_explains_each_failure(lifecycle: Lifecycle, issuer, settings, store, clock: Clock):
    issued = lifecycle.create(ALICE, "t", [ROLE], timedelta(hours=1))
    now = lambda: clock()  # noqa: E731
    jwks = issuer.jwks()
    assert verify("not.a.jwt", settings, jwks, store, now).reason.startswith("not a JWT")
    header, payload, signature = issued.secret.removeprefix("mlt_").split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
    assert "InvalidSignatureError" in verify(tampered, settings, jwks, store, now).reason
    other_audience = verify(issued.secret, settings.replace(audience="other"), jwks, store, now)
    assert "InvalidAudienceError" in other_audience.reason
    unsigned = jwt.encode({"sub": "x"}, None, algorithm="none")
    assert "not allowed" in verify(unsigned, settings, jwks, store, now).reason
    assert "not published" in verify(issued.secret, settings, {"keys": []}, store, now).reason
    lifecycle.revoke(issued.info.id, Actor.operator())
    assert verify(issued.secret, settings, jwks, store, now).reason.startswith("revoked")
    clock.advance(timedelta(hours=2))
    assert "expired at" in verify(issued.secret, settings, jwks, store, now).reason
