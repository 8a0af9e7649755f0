"""The validator's own HTTP/1.1 protocol (`--server lean`) on a real socket, in-process.

A real Validator (local issuer over HTTP, keys and revocations loaded) behind
`DecisionProtocol`, driven by raw clients: keep-alive, pipelining in order around an
awaited decision, HEAD, bodies, refusals (400, 431), timeouts and graceful shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from uvicorn import Config
from uvicorn.server import ServerState

from tests.validator import tokens
from tests.validator.test_app import scenario
from token_service.issuers import Owner
from token_service.issuers.local import LocalIssuer
from token_service.lifecycle import Lifecycle
from token_service.validator.app import ASGIApp, Validator
from token_service.validator.protocol import DecisionProtocol
from token_service.validator.reasons import Reason
from token_service.validator.settings import ValidatorSettings

PREDICT = "/auth/envoy/v1/models/sentiment/predict"
Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def request(path: str, token: str | None = None, method: str = "POST", extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"{method} {path} HTTP/1.1\r\nHost: v\r\n{auth}{extra}\r\n".encode()


async def reply(reader: asyncio.StreamReader, head_only: bool = False) -> Reply:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    length = 0 if head_only else int(headers["content-length"])
    return Reply(int(lines[0].split()[1]), headers, await reader.readexactly(length))


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


def serve(
    vsettings: ValidatorSettings,
    body: Callable[[Callable[[], Awaitable[Client]], ServerState], Awaitable[Any]],
    keep_alive: float = 5,
) -> Any:
    """Run `body(connect, state)` against a started, ready Validator behind DecisionProtocol."""

    async def behind_protocol(validator: Validator) -> Any:
        config = Config(ASGIApp(validator), proxy_headers=False, lifespan="off", timeout_keep_alive=keep_alive)
        state = ServerState()
        server = await asyncio.get_running_loop().create_server(lambda: DecisionProtocol(config, state), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await body(lambda: asyncio.open_connection("127.0.0.1", port), state)
        finally:
            server.close()

    return scenario(vsettings, behind_protocol)


@pytest.fixture
def token(served_lifecycle: Lifecycle) -> str:
    return served_lifecycle.create(Owner("u-alice", "alice"), "t", ["model:sentiment:predict"]).secret


def test_keep_alive_identity_headers_and_ops_endpoints(vsettings: ValidatorSettings, token: str) -> None:
    async def body(connect: Callable[[], Awaitable[Client]], state: ServerState) -> None:
        reader, writer = await connect()
        for _ in range(2):  # the same connection, twice: the second answer comes from the cache
            writer.write(request(PREDICT, token))
            r = await reply(reader)
            assert r.status == 200 and r.body == b""
            assert r.headers["x-auth-owner"] == "u-alice" and r.headers["x-auth-roles"] == "model:sentiment:predict"
        writer.write(request("/healthz", method="GET") + request("/nowhere", method="GET"))
        assert (await reply(reader)).body == b"ok\n"
        r = await reply(reader)
        assert r.status == 404 and r.body == b'{"error":"not_found"}\n'
        writer.write(request(PREDICT))
        r = await reply(reader)
        assert r.status == 401 and r.headers["www-authenticate"] == 'Bearer realm="mltokens"'
        assert len(state.connections) == 1 and state.total_requests == 5
        writer.close()

    serve(vsettings, body)


def test_pipelined_requests_are_answered_in_order_around_an_awaited_decision(
    vsettings: ValidatorSettings, token: str
) -> None:
    """The middle token names an unknown kid: its answer waits for a JWKS refetch over HTTP,
    and the answers behind it wait for it."""
    _, claims, _ = tokens.segments(token)
    unknown_kid = jwt.encode(claims, rsa.generate_private_key(65537, 2048), "RS256", {"kid": "not-published"})

    async def body(connect: Callable[[], Awaitable[Client]], state: ServerState) -> None:
        reader, writer = await connect()
        writer.write(
            request(PREDICT, token)
            + request(PREDICT, unknown_kid)
            + request(PREDICT, token)
            + request("/healthz", method="GET")
        )
        statuses = [(await reply(reader)).status for _ in range(4)]
        assert statuses == [200, 401, 200, 200]
        writer.close()

    serve(vsettings, body)


def test_head_answers_carry_no_body_and_bodies_sent_are_skipped(vsettings: ValidatorSettings, token: str) -> None:
    async def body(connect: Callable[[], Awaitable[Client]], state: ServerState) -> None:
        reader, writer = await connect()
        writer.write(request(PREDICT, "x.y.z", method="HEAD"))
        r = await reply(reader, head_only=True)
        assert r.status == 401 and int(r.headers["content-length"]) > 0
        writer.write(request(PREDICT, token, extra="Content-Length: 11\r\n") + b"hello world")
        assert (await reply(reader)).status == 200
        writer.write(request(PREDICT, token, extra="Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\n0\r\n\r\n")
        assert (await reply(reader)).status == 200
        writer.close()

    serve(vsettings, body)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (request(PREDICT, "a" * 100_000), Reason.REQUEST_HEAD_TOO_LARGE),
        (request(PREDICT, "a.b.c", extra="Authorization: Bearer d.e.f\r\n"), Reason.MALFORMED_REQUEST),
        (request(PREDICT, "a.b.c", extra="aUTHORIZATION: Bearer a.b.c\r\n"), Reason.MALFORMED_REQUEST),
        (b"POST /auth/nginx HTTP/1.1\r\nX-Original-URI: /a\r\nX-Original-URI: /b\r\n\r\n", Reason.MALFORMED_REQUEST),
        (b"POST /auth/nginx HTTP/1.1\r\nx-original-uri: /a\r\nX-ORIGINAL-URI: /a\r\n\r\n", Reason.MALFORMED_REQUEST),
        (b"GARBAGE\r\n\r\n", Reason.MALFORMED_REQUEST),
    ],
    ids=["head-too-large", "two-authorizations", "spelled-apart", "two-original-uris", "spelled-apart-too", "garbage"],
)
def test_refusals_close_the_connection(
    vsettings: ValidatorSettings,
    served_issuer: LocalIssuer,
    raw: bytes,
    reason: Reason,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(connect: Callable[[], Awaitable[Client]], state: ServerState) -> None:
        reader, writer = await connect()
        writer.write(raw)
        r = await reply(reader)
        assert r.status == reason.status and r.headers["connection"] == "close"
        assert await closed(reader)

    with caplog.at_level(logging.INFO, logger="token_service.validator"):
        serve(vsettings, body)
    assert f"refuse {reason.status} {reason.value} before a decision" in caplog.text


def test_connection_close_http_1_0_and_upgrades_answer_then_close(vsettings: ValidatorSettings, token: str) -> None:
    """An upgrade (a WebSocket route's sub-request through nginx) is decided, never upgraded."""

    async def body(connect: Callable[[], Awaitable[Client]], state: ServerState) -> None:
        for raw in (
            request(PREDICT, token, extra="Connection: close\r\n"),
            request(PREDICT, token).replace(b"HTTP/1.1", b"HTTP/1.0"),
            request(PREDICT, token, extra="Connection: upgrade\r\nUpgrade: websocket\r\n"),
        ):
            reader, writer = await connect()
            writer.write(raw)
            r = await reply(reader)
            assert r.status == 200 and r.headers["connection"] == "close"
            assert await closed(reader)

    serve(vsettings, body)


def test_an_upgrade_whose_decision_is_awaited_gets_that_decision(
    vsettings: ValidatorSettings, served_issuer: LocalIssuer, token: str
) -> None:
    """httptools raises HttpParserUpgrade after every complete upgrade request: a 400 went out ahead of a
    decision that waits (rate limits of a `limits` claim, a refetch for an unknown kid) and replaced it."""
    _, claims, _ = tokens.segments(token)
    kid, key = served_issuer.keys.signing_key()
    limited = "mlt_" + jwt.encode({**claims, "limits": {"daily": 2}}, key, "RS256", {"kid": kid})
    unknown_kid = jwt.encode(claims, rsa.generate_private_key(65537, 2048), "RS256", {"kid": "not-published"})
    upgrade = "Connection: upgrade\r\nUpgrade: websocket\r\n"

    async def body(connect: Callable[[], Awaitable[Client]], state: ServerState) -> None:
        answers = []
        for secret, extra in ((unknown_kid, upgrade), (limited, upgrade), (limited, ""), (limited, "")):
            reader, writer = await connect()
            writer.write(request(PREDICT, secret, extra=extra))
            r = await reply(reader)
            answers.append((r.status, r.headers.get("x-auth-subject")))
            if extra:
                assert r.headers["connection"] == "close" and await closed(reader)
            writer.close()
        # the upgrade decided and counted once: the daily quota of 2 runs out at the third request
        assert answers == [(401, None), (200, "u-alice"), (200, "u-alice"), (429, None)]

    serve(vsettings, body)


def test_idle_and_slow_connections_are_closed(vsettings: ValidatorSettings, token: str) -> None:
    vsettings = dataclasses.replace(vsettings, request_timeout=0.3)

    async def body(connect: Callable[[], Awaitable[Client]], state: ServerState) -> None:
        idle_reader, idle_writer = await connect()
        idle_writer.write(request(PREDICT, token))
        assert (await reply(idle_reader)).status == 200
        slow_reader, slow_writer = await connect()
        slow_writer.write(request(PREDICT, token)[:20])  # a head that never completes
        started = time.monotonic()
        assert await closed(slow_reader)
        assert time.monotonic() - started < 0.9  # the request bound, not the keep-alive one
        assert await closed(idle_reader)
        assert time.monotonic() - started >= 0.5
        assert not state.connections

    serve(vsettings, body, keep_alive=1.0)


def test_graceful_shutdown_closes_idle_connections_and_finishes_pending_ones(
    vsettings: ValidatorSettings, token: str
) -> None:
    async def body(connect: Callable[[], Awaitable[Client]], state: ServerState) -> None:
        idle_reader, idle_writer = await connect()
        idle_writer.write(request("/healthz", method="GET"))
        await reply(idle_reader)
        busy_reader, busy_writer = await connect()
        busy_writer.write(request(PREDICT, token)[:30])
        await asyncio.sleep(0.05)
        for connection in list(state.connections):
            connection.shutdown()
        assert await closed(idle_reader)
        busy_writer.write(request(PREDICT, token)[30:])  # the request under way is still answered
        r = await reply(busy_reader)
        assert r.status == 200 and r.headers["connection"] == "close"
        assert await closed(busy_reader)

    serve(vsettings, body)


class StandInTransport:
    """What a connection writes, write by write: a socket cannot show where one write ends."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "a write after the close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def on_stand_in(
    vsettings: ValidatorSettings, body: Callable[[Callable[[], Any]], Awaitable[Any]], **changes: Any
) -> Any:
    """Run `body(connect)`, where `connect()` is a (DecisionProtocol, StandInTransport) pair;
    `changes` to the validator's settings, as `scenario`'s."""

    async def behind_protocol(validator: Validator) -> Any:
        config = Config(ASGIApp(validator), proxy_headers=False, lifespan="off")
        state = ServerState()

        def connect() -> tuple[DecisionProtocol, StandInTransport]:
            protocol, transport = DecisionProtocol(config, state), StandInTransport()
            protocol.connection_made(transport)  # type: ignore[arg-type]
            return protocol, transport

        return await body(connect)

    return scenario(vsettings, behind_protocol, **changes)


def statuses(written: bytes) -> list[int]:
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", written)]


def test_the_answers_of_one_pass_are_written_after_it_one_write_a_connection(
    vsettings: ValidatorSettings, token: str
) -> None:
    """Answers are queued while the loop handles the connections ready in its pass, then written:
    pipelined answers with one write, in order; nothing before the pass ends."""

    async def body(connect: Callable[[], Any]) -> None:
        (first, first_out), (second, second_out) = connect(), connect()
        first.data_received(request(PREDICT, token) + request(PREDICT) + request("/healthz", method="GET"))
        second.data_received(request(PREDICT, token))
        assert first_out.writes == [] and second_out.writes == []
        await asyncio.sleep(0)  # the pass ends
        assert len(first_out.writes) == 1 and statuses(first_out.writes[0]) == [200, 401, 200]
        assert len(second_out.writes) == 1 and statuses(second_out.writes[0]) == [200]
        second.data_received(request(PREDICT, token))
        await asyncio.sleep(0)
        assert len(second_out.writes) == 2 and not second_out.closed

    on_stand_in(vsettings, body)


def test_one_callback_writes_a_pass_and_an_allowed_answer_is_made_once(
    vsettings: ValidatorSettings, token: str
) -> None:
    """The connections of a server share one outbox per loop: the first answer of a pass schedules
    its writing, the others join it. An allowed answer's bytes are made once per header tuple."""

    class CountingLoop:
        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.loop, self.scheduled = loop, 0

        def call_soon(self, callback: Callable[[], Any]) -> Any:
            self.scheduled += 1
            return self.loop.call_soon(callback)

        def time(self) -> float:
            return self.loop.time()

    async def body(connect: Callable[[], Any]) -> None:
        (first, first_out), (second, second_out), (third, third_out) = connect(), connect(), connect()
        assert first.outbox is second.outbox is third.outbox
        counting = CountingLoop(first.outbox.loop)
        first.outbox.loop = counting
        for protocol in (first, second, third):
            protocol.data_received(request(PREDICT, token))
        third.data_received(request(PREDICT, token))  # pipelined: one write of both
        await asyncio.sleep(0)
        assert counting.scheduled == 1
        assert [statuses(out.writes[0]) for out in (first_out, second_out)] == [[200], [200]]
        assert first_out.writes[0] is second_out.writes[0]  # the same bytes, not made again
        assert third_out.writes == [first_out.writes[0] * 2]
        second.data_received(request(PREDICT, token))
        await asyncio.sleep(0)
        assert counting.scheduled == 2 and len(second_out.writes) == 2

    on_stand_in(vsettings, body)

    async def elsewhere(connect: Callable[[], Any]) -> DecisionProtocol:
        return connect()[0]

    # another server (its own state) or another loop: another outbox
    assert on_stand_in(vsettings, elsewhere).outbox is not on_stand_in(vsettings, elsewhere).outbox


def test_queued_answers_are_written_before_any_close(vsettings: ValidatorSettings, token: str) -> None:
    """A refusal after answered pipelined requests, the client's end of sending, a graceful
    shutdown: each closes only after what was queued before it, and nothing follows a close."""

    async def body(connect: Callable[[], Any]) -> None:
        refused, refused_out = connect()
        refused.data_received(request(PREDICT, token) + b"NOT HTTP\r\n\r\n")
        await asyncio.sleep(0)
        assert statuses(b"".join(refused_out.writes)) == [200, 400] and refused_out.closed
        ended, ended_out = connect()
        ended.data_received(request(PREDICT, token))
        ended.eof_received()  # the transport closes itself after this
        assert statuses(b"".join(ended_out.writes)) == [200]
        stopped, stopped_out = connect()
        stopped.data_received(request(PREDICT, token))
        stopped.shutdown()
        assert statuses(b"".join(stopped_out.writes)) == [200] and stopped_out.closed
        closing, closing_out = connect()
        closing.data_received(request(PREDICT, token, extra="Connection: close\r\n") + request(PREDICT, token))
        await asyncio.sleep(0)
        assert statuses(b"".join(closing_out.writes)) == [200] and closing_out.closed

    on_stand_in(vsettings, body)


def asker(protocol: DecisionProtocol, out: StandInTransport) -> Callable[[bytes], Awaitable[tuple[int, bool]]]:
    """`ask(raw)`: one request through `protocol`, answered by the end of the pass: its status, and
    whether `Decider.decide` ran to the token's route for it (False: answered without deciding anew,
    or refused before)."""

    async def ask(raw: bytes) -> tuple[int, bool]:
        protocol.decider.last = None
        protocol.data_received(raw)
        await asyncio.sleep(0)
        return statuses(out.writes[-1])[-1], protocol.decider.last is not None

    return ask


def test_a_request_allowed_before_is_answered_again_while_its_token_stands(
    vsettings: ValidatorSettings, served_lifecycle: Lifecycle
) -> None:
    """The same decision inputs (method, target, decision headers) allowed before get the same
    answer without deciding anew, counted as a decision; anything that would change the decision
    (revocation, expiry, stale revocations, the token no longer cached) decides anew, and other
    inputs never share an answer."""
    issued = served_lifecycle.create(Owner("u-alice", "alice"), "t", ["model:sentiment:predict"])
    other = served_lifecycle.create(Owner("u-bob", "bob"), "t", ["model:sentiment:predict"]).secret
    predict = request(PREDICT, issued.secret)

    async def body(connect: Callable[[], Any]) -> None:
        protocol, out = connect()
        decider, ask = protocol.decider, asker(protocol, out)
        assert await ask(predict) == (200, True)
        first = out.writes[-1]
        assert await ask(predict) == (200, False)
        assert out.writes[-1] is first and b"x-auth-owner: u-alice" in first
        assert protocol.validator.metrics._decisions[Reason.ALLOWED] == 1
        protocol.validator.fold()  # the answer given again is tallied until then (once a second)
        assert protocol.validator.metrics._decisions[Reason.ALLOWED] == 2
        assert protocol.validator.usage.pending[issued.info.id][0] == 2
        # the same inputs, a header's name spelled otherwise
        assert await ask(predict.replace(b"Authorization:", b"AUTHORIZATION:")) == (200, False)
        # other inputs: another token, route, contract or method; a second Authorization refused
        assert await ask(request(PREDICT, other)) == (200, True)
        assert b"x-auth-owner: u-bob" in out.writes[-1]
        assert await ask(request("/auth/envoy/v1/models", issued.secret, method="GET")) == (200, True)
        nginx = request(
            "/auth/nginx", issued.secret, extra=f"X-Original-Method: POST\r\nX-Original-URI: {PREDICT[11:]}\r\n"
        )
        assert await ask(nginx) == (200, True)
        assert await ask(nginx) == (200, False)
        train = nginx.replace(b"/predict", b"/train")
        assert await ask(train) == (403, True)
        assert await ask(train) == (403, True)  # refusals are decided each time (and logged)
        assert await ask(request(PREDICT, issued.secret, method="PUT")) == (403, True)
        twice = request(PREDICT, issued.secret, extra=f"Authorization: Bearer {other}\r\n")
        protocol.data_received(twice)
        await asyncio.sleep(0)
        assert statuses(out.writes[-1]) == [400] and out.closed
        # the token no longer cached (an issuer withdrew a key): verified again
        protocol, out = connect()
        ask = asker(protocol, out)
        assert await ask(predict) == (200, False)
        decider.clear_cache()
        assert await ask(predict) == (200, True)
        # expired by now
        wall = decider.wall
        decider.wall = lambda: wall() + 20 * 366 * 86400
        assert await ask(predict) == (401, False)
        decider.wall = wall
        assert await ask(predict) == (200, False)  # still cached, as `decide` would find it
        # revocations stale, then current again
        confirmed_at = decider.revocations.confirmed_at
        decider.revocations.confirmed_at = float("-inf")
        assert await ask(predict) == (503, False)
        decider.revocations.confirmed_at = confirmed_at
        assert await ask(predict) == (200, False)
        # revoked: refused at once, and from then on
        decider.revocations.add(None, issued.info.id, 0.0, time.time())
        assert await ask(predict) == (401, False)
        assert await ask(predict) == (401, False)
        assert await ask(request(PREDICT, other)) == (200, True)  # the set's version moved: looked up again
        assert await ask(request(PREDICT, other)) == (200, False)

    on_stand_in(vsettings, body)


class Feeds:
    """A connection's parser, counting the chunks it is fed."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.chunks = 0

    def feed_data(self, data: bytes) -> None:
        self.chunks += 1
        self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


def fed(connect: Callable[[], Any]) -> tuple[DecisionProtocol, StandInTransport, Feeds]:
    protocol, out = connect()
    protocol.parser = feeds = Feeds(protocol.parser)
    return protocol, out, feeds


def test_a_request_seen_before_is_answered_again_by_its_bytes_without_parsing(
    vsettings: ValidatorSettings, served_lifecycle: Lifecycle
) -> None:
    """A chunk that is exactly one request allowed before is answered again without the parser,
    while the token stands, and counted; a request split in two, two in one chunk, one that closes
    the connection and anything after them are parsed, and the parser's state stays right."""
    issued = served_lifecycle.create(Owner("u-alice", "alice"), "t", ["model:sentiment:predict"])
    other = served_lifecycle.create(Owner("u-bob", "bob"), "t", ["model:sentiment:predict"]).secret
    raw = request(PREDICT, issued.secret)

    async def body(connect: Callable[[], Any]) -> None:
        protocol, out, feeds = fed(connect)
        ask = asker(protocol, out)
        assert await ask(raw) == (200, True) and feeds.chunks == 1
        assert await ask(raw) == (200, False) and feeds.chunks == 1  # by its bytes
        assert out.writes[-1] == out.writes[-2] and b"x-auth-owner: u-alice" in out.writes[-1]
        protocol.validator.fold()
        assert protocol.validator.metrics._decisions[Reason.ALLOWED] == 2
        assert protocol.validator.usage.pending[issued.info.id][0] == 2
        # split in two chunks: parsed, and answered again by its inputs
        protocol.data_received(raw[:100])
        assert await ask(raw[100:]) == (200, False) and feeds.chunks == 3
        tail, tail_out = connect()  # its second part was never taken for a request
        assert await asker(tail, tail_out)(raw[100:]) == (400, False) and tail_out.closed
        # two in one chunk: both answered, parsed each time
        for chunks in (4, 5):
            protocol.data_received(raw + raw)
            await asyncio.sleep(0)
            assert statuses(out.writes[-1]) == [200, 200] and feeds.chunks == chunks
        # then the parser's state is as before: the single request by its bytes, another parsed
        assert await ask(raw) == (200, False) and feeds.chunks == 5
        assert await ask(request(PREDICT, other)) == (200, True) and feeds.chunks == 6
        assert b"x-auth-owner: u-bob" in out.writes[-1]
        assert await ask(raw) == (200, False) and feeds.chunks == 6
        # another connection finds it too
        second, second_out, second_feeds = fed(connect)
        assert await asker(second, second_out)(raw) == (200, False) and second_feeds.chunks == 0
        # a request closing its connection: decided each time, never answered by its bytes
        closing = request(PREDICT, issued.secret, extra="Connection: close\r\n")
        for _ in range(2):
            closer, closer_out, closer_feeds = fed(connect)
            assert await asker(closer, closer_out)(closing) == (200, True)
            assert closer_feeds.chunks == 1 and closer_out.closed
        # a request followed by bytes refused: both answered each time, never by the chunk's bytes
        for trailer in (b"\x00\r\n", b"GET / HTTP/9.9\r\n\r\n"):
            for _ in range(2):
                refused, refused_out, refused_feeds = fed(connect)
                refused.data_received(raw + trailer)
                await asyncio.sleep(0)
                assert statuses(b"".join(refused_out.writes)) == [200, 400] and refused_out.closed
                assert refused_feeds.chunks == 1
        # after an answer that closes the connection, nothing more is answered or counted
        protocol.validator.fold()
        allowed = protocol.validator.metrics._decisions[Reason.ALLOWED]
        closer, closer_out = connect()
        closer.data_received(closing)
        closer.data_received(raw)
        await asyncio.sleep(0)
        assert statuses(b"".join(closer_out.writes)) == [200] and closer_out.closed
        protocol.validator.fold()
        assert protocol.validator.metrics._decisions[Reason.ALLOWED] == allowed + 1
        # revoked: the same bytes refused, from then on
        protocol.decider.revocations.add(None, issued.info.id, 0.0, time.time())
        assert await ask(raw) == (401, False) and feeds.chunks == 7
        assert await ask(raw) == (401, False) and feeds.chunks == 8

    on_stand_in(vsettings, body)


def test_requests_that_vary_are_parsed_without_hashing_after_a_run_of_misses(
    vsettings: ValidatorSettings, token: str
) -> None:
    """Requests that differ only in a header the decision does not read (a request id) are answered
    again by their inputs. Their bytes are remembered until 8 in a row miss; then the next 64 chunks
    are parsed unhashed, then 128 after the next 8 misses; a hit ends a run of misses."""
    varying = [request(PREDICT, token, extra=f"X-Request-Id: {i:08d}\r\n") for i in range(220)]

    async def body(connect: Callable[[], Any]) -> None:
        protocol, out, feeds = fed(connect)
        ask = asker(protocol, out)
        assert await ask(varying[0]) == (200, True)
        for raw in varying[1:]:
            assert await ask(raw) == (200, False)
        assert feeds.chunks == 220

        async def remembered(raw: bytes) -> bool:
            probe, probe_out, probe_feeds = fed(connect)
            assert await asker(probe, probe_out)(raw) == (200, False)
            return probe_feeds.chunks == 0

        kept = [i for i, raw in enumerate(varying) if await remembered(raw)]
        # the first (a new decision), 8 misses, 64 unhashed, 8 misses, 128 unhashed, 8 misses
        assert kept == [*range(9), *range(73, 81), *range(209, 217)]
        # a hit ends a run: 7 misses, a hit, 7 misses, each remembered
        others = [request(PREDICT, token, extra=f"X-Request-Id: n{i:07d}\r\n") for i in range(14)]
        protocol, out, feeds = fed(connect)
        ask = asker(protocol, out)
        for raw in [*others[:7], varying[0], *others[7:]]:
            assert await ask(raw) == (200, False)
        assert feeds.chunks == 14
        assert [await remembered(raw) for raw in others] == [True] * 14

    on_stand_in(vsettings, body)


def test_long_header_names_are_never_kept(vsettings: ValidatorSettings, token: str) -> None:
    """Header names are matched once a spelling, but a long one is not kept: a client sending many
    long names leaves no memory behind them."""

    async def body(connect: Callable[[], Any]) -> None:
        protocol, out = connect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(100):
                protocol.data_received(request(PREDICT, token, extra=f"{'x' * 50_000}{i}: 1\r\n"))
                await asyncio.sleep(0)
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert statuses(b"".join(out.writes)) == [200] * 100
        assert kept < 1_000_000  # the 100 names are 5 MB

    on_stand_in(vsettings, body)


def test_an_answer_remembered_by_one_validator_is_never_given_by_another(
    vsettings: ValidatorSettings, token: str
) -> None:
    """The answers decided before are kept per process, but given again only while their entry is
    the asking validator's own cached token: a second validator in the process decides for itself,
    and counts its own answers."""

    async def body(connect: Callable[[], Any]) -> None:
        protocol, out = connect()
        ask = asker(protocol, out)
        assert await ask(request(PREDICT, token)) == (200, True)
        assert await ask(request(PREDICT, token)) == (200, False)
        other = Validator(vsettings)
        await other.start(ready_within=10)
        try:
            config = Config(ASGIApp(other), proxy_headers=False, lifespan="off")
            other_protocol, other_out = DecisionProtocol(config, ServerState()), StandInTransport()
            other_protocol.connection_made(other_out)  # type: ignore[arg-type]
            ask_other = asker(other_protocol, other_out)
            assert await ask_other(request(PREDICT, token)) == (200, True)
            assert await ask_other(request(PREDICT, token)) == (200, False)  # its own entry from now on
            assert await ask(request(PREDICT, token)) == (200, True)  # the other's entry replaced this one's
            other.fold()
            assert other.metrics._decisions[Reason.ALLOWED] == 2
        finally:
            await other.stop()

    on_stand_in(vsettings, body)


def test_a_rate_limited_route_is_decided_and_counted_every_time(
    vsettings: ValidatorSettings, token: str, tmp_path: Any
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "routes:\n  - path: /v1/models/{model}/predict\n    methods: [POST]\n"
        '    roles: ["model:{model}:predict"]\n    rate_limit: 0.01\n    burst: 2\n'
    )

    async def body(connect: Callable[[], Any]) -> list[tuple[int, bool]]:
        protocol, out = connect()
        answers = []
        for _ in range(3):
            protocol.data_received(request(PREDICT, token))
            await asyncio.sleep(0.05)  # the limiter's answer is awaited
            answers.append(statuses(out.writes[-1])[-1])
        return answers

    assert on_stand_in(vsettings, body, policy_file=str(policy)) == [200, 200, 429]
