"""RFC 7662 `POST /introspect`: in-process answers, a property test that nothing crashes it, and a
real `mltokens serve` (each HTTP server) asked by authlib's introspection client."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.validator import tokens
from tests.validator.conftest import INTROSPECTION_SECRET, Served
from tests.validator.test_app import scenario
from token_service.issuers import Owner
from token_service.issuers.local import LocalIssuer
from token_service.lifecycle import Actor, Lifecycle
from token_service.validator.app import Validator
from token_service.validator.settings import ValidatorSettings

SECRET = INTROSPECTION_SECRET
FORM = "application/x-www-form-urlencoded"
BASIC = "Basic " + base64.b64encode(f"gateway:{SECRET}".encode()).decode()


def ask(v: Validator, body: bytes | str, authorization: str | None = BASIC, content_type: str | None = FORM) -> Any:
    headers = {k: val for k, val in (("authorization", authorization), ("content-type", content_type)) if val}
    raw = body.encode() if isinstance(body, str) else body
    return v.handle("POST", "/introspect", headers.get, raw)


def answer(response: tuple[int, Any, bytes]) -> tuple[int, dict[str, Any]]:
    status, _, body = response
    return status, json.loads(body)


def test_answers_of_the_endpoint(
    vsettings: ValidatorSettings, served_lifecycle: Lifecycle, served_issuer: LocalIssuer
) -> None:
    issued = served_lifecycle.create(Owner("u-alice", "alice"), "t", ["model:sentiment:predict"])
    token = issued.secret
    attacker = tokens.attacker_key()
    _, claims, _ = tokens.segments(token)
    forged = {
        "garbage": "abc.def.ghi",
        "alg none": tokens.alg_none(token),
        "hmac with the public key": tokens.hmac_with_public_key(
            token, tokens.public_pem(served_issuer.keys.signing_key()[1].public_key())
        ),
        "re-signed": tokens.resign(token, attacker, roles=["admin"]),
        "expired": tokens.resign(token, attacker, exp=1),
        "unknown issuer": jwt.encode({**claims, "iss": "http://evil"}, attacker, "RS256", headers={"kid": "x"}),
        "not b64": "a b",
        "too large": "a" * 9000,
    }

    async def body(v: Validator) -> None:
        status, active = answer(await ask(v, urlencode({"token": token, "token_type_hint": "access_token"})))
        assert status == 200 and active["active"] is True
        assert active["sub"] == "u-alice" and active["username"] == "alice" and active["token_type"] == "Bearer"
        assert active["client_id"] == issued.info.id == active["token_id"] and active["roles"] == [
            "model:sentiment:predict"
        ]
        assert active["iss"] == served_issuer.issuer_url and active["jti"] == claims["jti"]
        assert active["aud"] == claims["aud"] and active["iat"] == claims["iat"] and active["exp"] <= claims["exp"]
        assert active["scope"] == claims.get("scope", "") and active["owner"] == "u-alice"
        # the same secret as a bearer, or as form parameters (client_secret_post)
        assert answer(await ask(v, f"token={token}", authorization=f"Bearer {SECRET}"))[1]["active"] is True
        post = urlencode({"token": token, "client_id": "gateway", "client_secret": SECRET})
        assert answer(await ask(v, post, authorization=None))[1]["active"] is True
        for name, bad in forged.items():
            response = await ask(v, urlencode({"token": bad}))
            assert response[0] == 200 and response[2] == b'{"active":false}\n', name
        # the caller is not authenticated: 401 with a challenge, whatever the token
        wrong_secret = "Basic " + base64.b64encode(b"gateway:wrong-secret-0123456789").decode()
        wrong_id = "Basic " + base64.b64encode(f"kong:{SECRET}".encode()).decode()
        for authorization in (None, wrong_secret, wrong_id, "Bearer nope", "Basic !!!", f"Digest {SECRET}"):
            status, headers, _ = await ask(v, f"token={token}", authorization=authorization)
            assert status == 401 and dict(headers)["www-authenticate"].startswith("Basic "), authorization
        # not an RFC 7662 request
        assert (await ask(v, f"token={token}", content_type="application/json"))[0] == 400
        assert (await ask(v, f"token={token}", content_type=None))[0] == 400
        assert answer(await ask(v, ""))[1] == {"error": "invalid_request"}
        assert (await ask(v, f"token={token}&token={token}"))[0] == 400
        assert (await ask(v, b"token=\xff"))[0] == 400
        assert (await v.handle("POST", "/introspect", {"authorization": BASIC, "content-type": FORM}.get, None))[
            0
        ] == 400  # the server found the body too large
        assert (await v.handle("GET", "/introspect", {}.get))[0] == 405
        metrics = (await v.handle("GET", "/metrics", {}.get))[2].decode()
        assert 'mltokens_validator_introspections_total{active="true"} 3.0' in metrics
        assert f'mltokens_validator_introspections_total{{active="false"}} {float(len(forged))}' in metrics

    scenario(vsettings, body, introspection_secret=SECRET)


def test_a_parameter_given_twice_is_refused_even_with_one_copy_blank(
    vsettings: ValidatorSettings, served_lifecycle: Lifecycle
) -> None:
    """Blank values were dropped before the repeat check: `token=&token=<valid>` was introspected,
    `client_secret=&client_secret=<secret>` authenticated. A lone blank parameter is still as if omitted."""
    token = served_lifecycle.create(Owner("u-alice", "alice"), "t", ["model:sentiment:predict"]).secret
    post = f"token={token}&client_id=gateway"

    async def body(v: Validator) -> None:
        for form in (
            f"token=&token={token}",
            f"token={token}&token=",
            f"token={token}&token_type_hint=&token_type_hint=a",
        ):
            assert answer(await ask(v, form)) == (400, {"error": "invalid_request"}), form
        for form in (f"{post}&client_secret=&client_secret={SECRET}", f"{post}&client_secret={SECRET}&client_secret="):
            assert answer(await ask(v, form, authorization=None)) == (400, {"error": "invalid_request"}), form
        assert answer(await ask(v, "token="))[0] == 400  # no token
        assert answer(await ask(v, f"token={token}&token_type_hint="))[1]["active"] is True
        assert answer(await ask(v, f"{post}&client_secret={SECRET}", authorization=None))[1]["active"] is True

    scenario(vsettings, body, introspection_secret=SECRET)


def test_the_endpoint_is_off_without_a_secret(vsettings: ValidatorSettings, served_lifecycle: Lifecycle) -> None:
    async def body(v: Validator) -> int:
        return (await ask(v, "token=x"))[0]

    assert scenario(vsettings, body) == 404


def test_stale_revocations_are_503_not_inactive(vsettings: ValidatorSettings, served_lifecycle: Lifecycle) -> None:
    token = served_lifecycle.create(Owner("u-alice", "alice"), "t", ["model:sentiment:predict"]).secret

    async def body(v: Validator) -> tuple[int, dict[str, str]]:
        v.revocations.confirmed_at = time.monotonic() - 60
        status, headers, _ = await ask(v, f"token={token}")
        return status, dict(headers)

    status, headers = scenario(vsettings, body, introspection_secret=SECRET, heartbeat_interval=3600.0)
    assert status == 503 and headers["retry-after"] == "5"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)),
    content_type=st.one_of(st.none(), st.just(FORM), st.text(max_size=40)),
    authorization=st.one_of(st.none(), st.just(BASIC), st.just(f"Bearer {SECRET}"), st.text(max_size=80)),
)
def test_no_request_crashes_the_endpoint(
    introspecting: Validator, body: bytes, content_type: str | None, authorization: str | None
) -> None:
    import asyncio

    headers = {k: v for k, v in (("authorization", authorization), ("content-type", content_type)) if v is not None}
    status, _, answer_ = asyncio.run(introspecting.handle("POST", "/introspect", headers.get, body))
    assert status in (200, 400, 401)
    assert answer_ in (b'{"active":false}\n', b'{"error":"invalid_request"}\n', b'{"error":"invalid_client"}\n')


@pytest.fixture
def introspecting(vsettings: ValidatorSettings, key_cache: Any, revocations: Any) -> Validator:
    """A Validator whose keys and revocations are loaded without its background tasks (one per test)."""
    import dataclasses

    v = Validator(dataclasses.replace(vsettings, introspection_secret=SECRET))
    v.keys, v.decider.keys, v.revocations, v.decider.revocations = key_cache, key_cache, revocations, revocations
    return v


def _slowly(*pieces: bytes) -> Iterator[bytes]:
    """A request body in pieces, each its own write (requests sends a generator chunked), 0.2 s apart."""
    for i, piece in enumerate(pieces):
        if i:
            time.sleep(0.2)
        yield piece


def test_authlib_introspects_through_each_server_and_sees_a_revocation_at_once(served: Served) -> None:
    urls = {server: f"http://127.0.0.1:{port}/introspect" for server, port in served.ports.items()}
    lifecycle = served.lifecycle()
    try:
        issued = lifecycle.create(Owner("u-bob", "bob"), "t", ["model:sentiment:predict"])
        client = OAuth2Session("gateway", SECRET)  # client_secret_basic, authlib's default
        for server, url in urls.items():
            found = client.introspect_token(url, token=issued.secret, timeout=5)
            assert found.status_code == 200, (server, found.text)
            assert found.json()["active"] is True and found.json()["username"] == "bob", server
            assert found.headers["cache-control"] == "no-store"
            refused = OAuth2Session("gateway", "not-the-secret-at-all").introspect_token(url, token=issued.secret)
            assert refused.status_code == 401 and "WWW-Authenticate" in refused.headers, server
            bad = requests.post(url, data=json.dumps({"token": issued.secret}), auth=("gateway", SECRET), timeout=5)
            assert bad.status_code == 400 and bad.json() == {"error": "invalid_request"}, server
            huge = requests.post(url, data={"token": "a" * 40000}, auth=("gateway", SECRET), timeout=5)
            assert huge.status_code == 400, server  # past the body bound: not read whole
            form = urlencode({"token": issued.secret}).encode()  # chunked, in two writes 0.2 s apart: read whole
            pieces = _slowly(form[:3], form[3:])
            split = requests.post(url, data=pieces, auth=("gateway", SECRET), headers={"content-type": FORM}, timeout=5)
            assert split.status_code == 200 and split.json()["active"] is True, (server, split.text)
        lifecycle.revoke(issued.info.id, Actor.operator())
        started = time.monotonic()
        for url in urls.values():
            while client.introspect_token(url, token=issued.secret, timeout=5).json()["active"]:
                assert time.monotonic() - started < 2, "revocation not seen"
                time.sleep(0.005)
        assert client.introspect_token(urls["lean"], token=issued.secret).json() == {"active": False}
    finally:
        lifecycle.store.dispose()
