"""The Validator application in-process: endpoints, contracts, key rotation, usage, metrics.

Real parts throughout: the local issuer over HTTP, PostgreSQL (LISTEN/NOTIFY, usage
UPDATEs); only the HTTP server in front of `Validator.handle` is left out (the e2e and
revocation-feed tests run that too).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from sqlalchemy import text

from tests.support.clock import Clock
from tests.support.heap import run_unfrozen
from tests.support.stack import free_port
from tests.validator import tokens
from tests.validator.conftest import INTROSPECTION_SECRET, Served
from token_service.config import Settings
from token_service.issuers import Owner
from token_service.issuers.local import LocalIssuer
from token_service.lifecycle import Lifecycle
from token_service.store import Store
from token_service.validator.app import Validator
from token_service.validator.settings import ValidatorSettings

PREDICT = "/v1/models/sentiment/predict"


def scenario(vsettings: ValidatorSettings, body: Callable[[Validator], Awaitable[Any]], **changes: Any) -> Any:
    """Run `body` against a started Validator (ready: keys and revocations loaded)."""
    import dataclasses

    async def run() -> Any:
        validator = Validator(dataclasses.replace(vsettings, **changes))
        await validator.start()
        try:
            deadline = time.monotonic() + 10
            while not validator.ready:
                assert time.monotonic() < deadline, "validator not ready"
                await asyncio.sleep(0.02)
            return await body(validator)
        finally:
            await validator.stop()

    return asyncio.run(run())


def envoy(validator: Validator, token: str | None, path: str = PREDICT, method: str = "POST") -> Awaitable[Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return validator.handle(method, "/auth/envoy" + path, headers.get)


def _token(lifecycle: Lifecycle, name: str = "t") -> tuple[str, str]:
    issued = lifecycle.create(Owner("u-alice", "alice"), name, ["model:sentiment:predict"])
    return issued.secret, issued.info.id


def test_endpoints_and_contracts_agree(vsettings: ValidatorSettings, served_lifecycle: Lifecycle) -> None:
    token, _ = _token(served_lifecycle)
    auth = f"Bearer {token}"

    async def body(v: Validator) -> None:
        assert (await v.handle("GET", "/healthz", {}.get))[0] == 200
        assert (await v.handle("GET", "/readyz", {}.get))[0] == 200
        nginx = {"authorization": auth, "x-original-method": "POST", "x-original-uri": PREDICT + "?a=1"}
        forward = {"authorization": auth, "x-forwarded-method": "POST", "x-forwarded-uri": PREDICT}
        statuses = [
            (await envoy(v, token))[0],
            (await v.handle("GET", "/auth/nginx", nginx.get))[0],
            (await v.handle("GET", "/auth/forward", forward.get))[0],
        ]
        assert statuses == [200, 200, 200]
        assert (await v.handle("GET", "/auth/nginx", {"authorization": auth}.get))[0] == 503
        assert (await envoy(v, token, "/v1/models/sentiment/../vision/train"))[0] == 403
        assert (await v.handle("GET", "/nothing", {}.get))[0] == 404
        status, headers, body_ = await envoy(v, "x.y.z")
        assert status == 401 and b"x.y.z" not in body_ and dict(headers)["content-type"] == "application/json"
        metrics = (await v.handle("GET", "/metrics", {}.get))[2].decode()
        assert 'mltokens_validator_decisions_total{reason="allowed",status="200"} 3.0' in metrics
        assert 'mltokens_validator_decisions_total{reason="malformed",status="401"} 1.0' in metrics
        assert 'mltokens_validator_decisions_total{reason="missing_original_request",status="503"}' in metrics
        assert "mltokens_validator_revocation_age_seconds" in metrics
        assert "mltokens_validator_key_refreshes_total{issuer=" in metrics

    scenario(vsettings, body)


def test_rotated_key_is_fetched_on_first_sight_and_random_kids_do_not_storm(
    vsettings: ValidatorSettings, served_lifecycle: Lifecycle, served_issuer: LocalIssuer, clock: Clock
) -> None:
    attacker = tokens.attacker_key()  # made outside the event loop: key generation would stall it

    async def body(v: Validator) -> None:
        iss = served_issuer.issuer_url
        before = v.keys.issuers[iss].fetches
        served_issuer.keys.rotate(clock())
        token, _ = _token(served_lifecycle, "after-rotation")
        assert (await envoy(v, token))[0] == 200  # unknown kid → one refetch → allowed
        assert v.keys.issuers[iss].fetches == before + 1
        _, claims, _ = tokens.segments(token)
        forged = [jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": f"random-{i}"}) for i in range(20)]
        results = await asyncio.gather(*(envoy(v, f) for f in forged))
        assert {r[0] for r in results} == {401}
        assert v.keys.issuers[iss].fetches == before + 1  # within the 30 s refetch interval: none

    scenario(vsettings, body, jwks_min_refetch_interval=30.0)


def test_usage_is_written_back_in_one_batch_per_interval(
    vsettings: ValidatorSettings, served_lifecycle: Lifecycle, store: Store
) -> None:
    a, a_id = _token(served_lifecycle, "a")
    b, b_id = _token(served_lifecycle, "b")

    async def body(v: Validator) -> int:
        for token in (a, a, a, b):
            assert (await envoy(v, token))[0] == 200
        assert v.usage.flushes == 0  # nothing written per request
        await v.usage.flush()
        return v.usage.flushes

    assert scenario(vsettings, body, usage_flush_interval=3600.0) == 1
    with store.engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT id, use_count FROM mltokens.token WHERE last_used_at IS NOT NULL")).all())
    assert rows == {a_id: 3, b_id: 1}


def test_notification_revokes_a_cached_token_while_running(
    vsettings: ValidatorSettings, served_lifecycle: Lifecycle
) -> None:
    from token_service.lifecycle import Actor

    token, token_id = _token(served_lifecycle)

    async def body(v: Validator) -> float:
        assert (await envoy(v, token))[0] == 200
        await asyncio.to_thread(served_lifecycle.revoke, token_id, Actor.operator())
        started = time.monotonic()
        while (await envoy(v, token))[0] == 200:
            assert time.monotonic() - started < 2, "revocation not seen"
            await asyncio.sleep(0.005)
        return (await envoy(v, token))[0]

    assert scenario(vsettings, body) == 401


def test_not_ready_without_database(
    served_settings: Settings, vsettings: ValidatorSettings, served_issuer: LocalIssuer
) -> None:
    async def run() -> tuple[int, int]:
        import dataclasses

        v = Validator(dataclasses.replace(vsettings, database_url="postgresql://postgres@127.0.0.1:9/none"))
        await v.start()
        try:
            await asyncio.sleep(0.5)
            return (await v.handle("GET", "/readyz", {}.get))[0], (await envoy(v, "a.b.c"))[0]
        finally:
            await v.stop()

    assert asyncio.run(run()) == (503, 503)


def _readyz_and_decision(vsettings: ValidatorSettings, token: str, **changes: Any) -> tuple[int, int]:
    """/readyz and a decision on a token of the first issuer, 1 s after start."""
    import dataclasses

    async def run() -> tuple[int, int]:
        v = Validator(dataclasses.replace(vsettings, **changes))
        await v.start(ready_within=1.0)
        try:
            await asyncio.sleep(0.3)
            return (await v.handle("GET", "/readyz", {}.get))[0], (await envoy(v, token))[0]
        finally:
            await v.stop()

    return asyncio.run(run())


def test_readiness_needs_the_first_issuer_unless_told_otherwise(
    vsettings: ValidatorSettings, served_lifecycle: Lifecycle
) -> None:
    """A secondary issuer that never answers (nothing listens on its port) keeps new
    replicas out of service only when readiness_issuers names it (or `*`)."""
    token, _ = _token(served_lifecycle)
    ours, down = vsettings.issuers[0], f"http://127.0.0.1:{free_port()}"
    both = (ours, down)
    assert _readyz_and_decision(vsettings, token, issuers=both) == (200, 200)
    assert _readyz_and_decision(vsettings, token, issuers=both, readiness_issuers=("*",)) == (503, 200)
    assert _readyz_and_decision(vsettings, token, issuers=both, readiness_issuers=(down,)) == (503, 200)
    assert _readyz_and_decision(vsettings, token, issuers=(down, ours)) == (503, 200)
    assert _readyz_and_decision(vsettings, token, issuers=(down, ours), readiness_issuers=(ours,)) == (200, 200)


def test_a_started_worker_freezes_its_start_up_heap(vsettings: ValidatorSettings, served_lifecycle: Lifecycle) -> None:
    """The ASGI lifespan (every server's worker start) moves the start-up heap out of the cyclic GC's reach
    (`freeze_startup_heap`: a full collection of it paused every request in flight for 35–55 ms), and
    the worker decides as before."""
    import gc

    from token_service.validator.app import ASGIApp

    secret, _ = _token(served_lifecycle)
    app = ASGIApp(Validator(vsettings))

    async def run() -> tuple[int, int]:
        inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        lifespan = asyncio.create_task(app({"type": "lifespan"}, inbox.get, outbox.put))
        await inbox.put({"type": "lifespan.startup"})
        assert (await asyncio.wait_for(outbox.get(), 10))["type"] == "lifespan.startup.complete"
        frozen = gc.get_freeze_count()
        status, _, _ = await envoy(app.validator, secret)
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 10)
        return frozen, status

    frozen, status = run_unfrozen(run)
    assert frozen > 10_000  # modules, classes, functions: everything alive at start-up
    assert status == 200


def exchange(port: int, raw: str | bytes) -> tuple[int, bytes]:
    """One request sent byte for byte on a new connection: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw.encode("latin-1") if isinstance(raw, str) else raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


def _served_token(served: Served, name: str) -> str:
    lifecycle = served.lifecycle()
    try:
        return lifecycle.create(Owner("u-alice", "alice"), name, ["model:sentiment:predict"]).secret
    finally:
        lifecycle.store.dispose()


def test_granian_refuses_the_envoy_prefix_contract_it_sees_only_decoded(served: Served) -> None:
    """RSGI has no raw path, only one granian has percent-decoded (lossily), which the contract then
    decoded again: `/healthz%3F/../v1/models/vision/train` was the anonymous `/healthz`, `%2573entiment`
    was `sentiment`. granian refuses the contract (503); the other contracts and servers decide as before."""
    auth = f"Authorization: Bearer {_served_token(served, 'envoy')}\r\n"

    def envoy(method: str, path: str, headers: str = "") -> str:
        return f"{method} /auth/envoy{path} HTTP/1.1\r\nHost: v\r\nConnection: close\r\n{headers}\r\n"

    tricks = [
        envoy("GET", "/healthz%3F/../v1/models/vision/train"),
        envoy("POST", PREDICT.replace("se", "%2573e"), auth),
    ]
    plain = envoy("POST", PREDICT, auth)
    nginx = f"GET /auth/nginx HTTP/1.1\r\nHost: v\r\nConnection: close\r\n{auth}X-Original-Method: POST\r\n"
    nginx += f"X-Original-URI: {PREDICT}\r\n\r\n"
    for server in ("lean", "uvicorn"):
        assert [exchange(served.ports[server], raw)[0] for raw in (*tricks, plain, nginx)] == [403, 403, 200, 200]
    port = served.ports["granian"]
    refused = (503, b'{"error":"temporarily_unavailable"}\n')
    assert [exchange(port, raw) for raw in (*tricks, plain)] == [refused] * 3
    assert exchange(port, nginx)[0] == 200
    log = served.validators["granian"].log_tail(200)
    assert "the Envoy prefix contract (/auth/envoy/<path>) is refused" in log
    assert "deny 503 unsupported_contract" in log


def test_every_server_refuses_a_repeated_header_the_decision_reads(served: Served) -> None:
    """Which copy would the gateway or model API use? lean answered 400, granian decided on the first
    copy, uvicorn on the last: all three answer the lean server's 400 now."""
    good, bad = f"Authorization: Bearer {_served_token(served, 'repeated')}\r\n", "Authorization: Bearer x.y.z\r\n"
    start = "HTTP/1.1\r\nHost: v\r\nConnection: close\r\n"
    nginx = f"GET /auth/nginx {start}X-Original-Method: POST\r\nX-Original-URI: {PREDICT}\r\n"
    forward = f"GET /auth/forward {start}X-Forwarded-Method: POST\r\nX-Forwarded-Uri: {PREDICT}\r\n"
    form = "token=x.y.z"
    secret = base64.b64encode(f"gateway:{INTROSPECTION_SECRET}".encode()).decode()
    introspect = f"POST /introspect {start}Authorization: Basic {secret}\r\nContent-Length: {len(form)}\r\n"
    content_type = "Content-Type: application/x-www-form-urlencoded\r\n"
    repeated = {
        "authorization, the good one first": nginx + good + bad + "\r\n",
        "authorization, the good one last": forward + bad + good + "\r\n",
        "x-original-uri": nginx + good + "X-Original-URI: /v1/models/vision/train\r\n\r\n",
        "x-original-method": nginx + good + "X-Original-Method: GET\r\n\r\n",
        "x-forwarded-uri": forward + good + "X-Forwarded-Uri: /v1/models/vision/train\r\n\r\n",
        "x-forwarded-method": forward + good + "X-Forwarded-Method: GET\r\n\r\n",
        "content-type of an introspection": introspect + content_type * 2 + "\r\n" + form,
    }
    for server, port in served.ports.items():
        once = (nginx + good + "\r\n", forward + good + "\r\n", introspect + content_type + "\r\n" + form)
        assert [exchange(port, raw)[0] for raw in once] == [200, 200, 200], server
        for name, raw in repeated.items():
            assert exchange(port, raw) == (400, b""), (server, name)
        assert "refuse 400 malformed_request before a decision" in served.validators[server].log_tail(100), server
