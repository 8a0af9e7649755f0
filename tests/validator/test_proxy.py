"""`mltokens proxy` as a real process in front of the demo model API (devstack/model_streams.py):
streaming both ways with flat memory, server-sent events as they come, a client that leaves
cancelling the upstream, WebSockets, the headers each side sees, an upstream that is down,
metrics only on their own listener, the body-size limit, and a body the client breaks or leaves
mid-upload (on aiohttp's C and pure-Python parsers).

The refusal answers, forged tokens, path tricks and look-alike headers are the gateway
contracts' table: tests/e2e/test_gateways.py runs it against the proxy as one more gateway.
A 200 MB upload always runs; 1 GB with MLTOKENS_TEST_LARGE_UPLOAD=1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import gzip
import http.client
import json
import os
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
import requests
from aiohttp import web
from multidict import CIMultiDictProxy
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from devstack.services import free_port, mltokens, start
from tests.support import pg
from tests.support.heap import run_unfrozen
from tests.support.stack import Running, ServiceSpec, Stack, wsgi_echo_spec
from tests.support.tls import authority_and_server
from token_service.issuers import Owner
from token_service.lifecycle import Lifecycle
from token_service.validator.contracts import ContractError, original_request
from token_service.validator.proxy import serve as serve_proxy
from token_service.validator.settings import ValidatorSettings

pytestmark = pytest.mark.xdist_group("proxy")  # one worker runs the stack; others skip it
MiB = 1 << 20
SECRET = "introspection-secret-0123456789"
UPLOAD = (1024 if os.environ.get("MLTOKENS_TEST_LARGE_UPLOAD") else 200) * MiB
RSS_GROWTH_LIMIT = 48 * MiB


@pytest.fixture(scope="module")
def stack(migrated_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with pg.database(template=migrated_template) as db_url:
        with Stack(
            db_url,
            tmp_path_factory.mktemp("proxy"),
            gateway="proxy",
            proxy_idle_timeout="3s",
            introspection_secret=SECRET,
        ) as s:
            yield s


@pytest.fixture(scope="module")
def tokens(stack: Stack) -> dict[str, str]:
    return {
        "predict": stack.create_token(["model:sentiment:predict"])[0],
        "train": stack.create_token(["model:sentiment:train"])[0],
    }


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class RssWatch:
    """The highest RSS of a process while the block runs, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.base = pid, 0, rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_started_proxy_freezes_its_start_up_heap(vsettings: ValidatorSettings, served_lifecycle: Lifecycle) -> None:
    """As every validator worker: once listening, `proxy.serve` moves its start-up heap out of the cyclic
    GC's reach (`freeze_startup_heap`), and a request with a token still reaches the upstream."""
    token = served_lifecycle.create(Owner("u-alice", "Alice"), "t", ["model:sentiment:predict"]).secret
    port, upstream_port = free_port(), free_port()

    async def run() -> tuple[int, int]:
        upstream = web.AppRunner(web.Application())
        upstream.app.router.add_post("/v1/models/sentiment/predict", lambda request: web.Response(text="ok"))
        await upstream.setup()
        await web.TCPSite(upstream, "127.0.0.1", upstream_port).start()
        serving = asyncio.create_task(serve_proxy(vsettings, f"http://127.0.0.1:{upstream_port}", "127.0.0.1", port))
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(200):  # until it listens and has frozen its heap
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"http://127.0.0.1:{port}/_mltokens/readyz") as ready:
                            if ready.status == 200 and gc.get_freeze_count():
                                break
                    await asyncio.sleep(0.05)
                frozen = gc.get_freeze_count()
                url = f"http://127.0.0.1:{port}/v1/models/sentiment/predict"
                async with session.post(url, headers=_auth(token)) as answer:
                    status = answer.status
        finally:
            serving.cancel()  # as a stop: its runners cleaned up, the proxy stopped
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            await upstream.cleanup()
        return frozen, status

    frozen, status = run_unfrozen(run)
    assert frozen > 10_000  # modules, classes, functions: everything alive at start-up
    assert status == 200


def test_a_large_upload_streams_through_with_flat_memory(stack: Stack, tokens: dict[str, str]) -> None:
    proxy = stack.service("proxy").process.pid
    block = b"\x00" * MiB
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports["gateway"], timeout=60)
    with RssWatch(proxy) as watch:
        conn.putrequest("POST", "/v1/models/sentiment/upload")
        conn.putheader("Authorization", f"Bearer {tokens['train']}")
        conn.putheader("Content-Length", str(UPLOAD))
        conn.endheaders()
        started = time.monotonic()
        for _ in range(UPLOAD // MiB):
            conn.send(block)
        answer = conn.getresponse()
        seconds = time.monotonic() - started
        body = json.loads(answer.read())
    conn.close()
    assert answer.status == 200 and body["bytes"] == UPLOAD
    assert body["caller"]["x-auth-roles"] == "model:sentiment:train"
    assert watch.peak - watch.base < RSS_GROWTH_LIMIT, (watch.base, watch.peak)
    print(f"upload {UPLOAD // MiB} MiB in {seconds:.2f} s: {UPLOAD / MiB / seconds:.0f} MiB/s")

    def chunks() -> Iterator[bytes]:  # no length: chunked transfer coding
        for _ in range(16):
            yield block

    r = requests.post(
        stack.gateway_url + "/v1/models/sentiment/upload", data=chunks(), headers=_auth(tokens["train"]), timeout=30
    )
    assert r.status_code == 200 and r.json()["bytes"] == 16 * MiB
    # the wrong role never reaches the sink: refused before a byte of the body is forwarded
    r = requests.put(
        stack.gateway_url + "/v1/models/sentiment/upload", data=block, headers=_auth(tokens["predict"]), timeout=10
    )
    assert r.status_code == 403 and r.json() == {"error": "insufficient_scope"}


def _expect_continue(port: int, token: str) -> bytes:
    """The first answer to an upload that waits for `100 Continue` before it sends its body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"PUT /v1/models/sentiment/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n" % token.encode()
        )
        first = sock.recv(65536)
        if not first.startswith(b"HTTP/1.1 100"):
            return first
        sock.sendall(b"hello")
        answer = b""
        while b'"bytes"' not in answer:
            answer += sock.recv(65536)
        return first + answer


def test_expect_100_continue_is_answered_after_the_decision(stack: Stack, tokens: dict[str, str]) -> None:
    allowed = _expect_continue(stack.ports["gateway"], tokens["train"])
    assert allowed.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200") and b'"bytes": 5' in allowed
    refused = _expect_continue(stack.ports["gateway"], tokens["predict"])
    assert refused.startswith(b"HTTP/1.1 403")  # the body was never asked for


def test_a_slow_reader_holds_the_upstream_back(stack: Stack, tokens: dict[str, str]) -> None:
    """Backpressure: a client that stops reading a 1 GB download leaves the proxy's memory flat."""
    proxy = stack.service("proxy").process.pid
    with RssWatch(proxy) as watch:
        r = requests.get(
            stack.gateway_url + "/v1/models/sentiment/download?bytes=1073741824",
            headers=_auth(tokens["predict"]),
            stream=True,
            timeout=10,
        )
        assert r.status_code == 200 and r.headers["Transfer-Encoding"] == "chunked"
        assert json.loads(r.headers["X-Caller"])["x-auth-subject"] == "u-alice"  # the upstream's own header
        assert r.headers["Cache-Control"] == "no-cache"
        assert len(r.raw.read(4 * MiB)) == 4 * MiB
        time.sleep(1.0)  # the model API writes as fast as it may; nobody reads
        r.close()
    assert watch.peak - watch.base < RSS_GROWTH_LIMIT, (watch.base, watch.peak)


def test_server_sent_events_arrive_one_by_one(stack: Stack, tokens: dict[str, str]) -> None:
    r = requests.post(
        stack.gateway_url + "/v1/models/sentiment/stream",
        json={"events": 4, "interval": 0.4},
        headers=_auth(tokens["predict"]),
        stream=True,
        timeout=10,
    )
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/event-stream"
    arrivals = []
    buffer = b""
    for data in r.iter_content(chunk_size=None):
        buffer += data
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            arrivals.append((json.loads(event.removeprefix(b"data: ")), time.time()))
    assert [e["i"] for e, _ in arrivals] == [0, 1, 2, 3]
    for event, arrived in arrivals:  # each as it was sent, not when the stream ended
        assert arrived - event["t"] < 0.25, arrivals
    assert arrivals[-1][1] - arrivals[0][1] > 1.0


def test_a_client_that_leaves_cancels_the_upstream_stream(stack: Stack, tokens: dict[str, str]) -> None:
    stats = stack.model_api_url + "/stream-stats"
    before = requests.get(stats, timeout=5).json()
    sock = socket.create_connection(("127.0.0.1", stack.ports["gateway"]), timeout=10)
    body = b'{"events": 600, "interval": 0.05}'
    sock.sendall(
        b"POST /v1/models/sentiment/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (tokens["predict"].encode(), len(body), body)
    )
    received = b""
    while b"data: " not in received:
        received += sock.recv(4096)
    sock.close()
    deadline = time.monotonic() + 5
    while (now := requests.get(stats, timeout=5).json())["cut"] == before["cut"]:
        assert time.monotonic() < deadline, "the upstream stream went on after the client left"
        time.sleep(0.05)
    assert now["finished"] == before["finished"]


def test_an_upstream_that_stalls_mid_body_is_cut_at_the_idle_timeout(stack: Stack, tokens: dict[str, str]) -> None:
    """proxy_idle_timeout is 3 s in this stack: events 4 s apart stall the body, the proxy gives up on it."""
    started = time.monotonic()
    r = requests.post(
        stack.gateway_url + "/v1/models/sentiment/stream",
        json={"events": 2, "interval": 4.0},
        headers=_auth(tokens["predict"]),
        stream=True,
        timeout=10,
    )
    assert r.status_code == 200
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for _ in r.iter_content(chunk_size=None):
            continue
    assert 2.5 < time.monotonic() - started < 4.0


def test_a_client_that_stalls_mid_upload_is_cut_at_the_idle_timeout(stack: Stack, tokens: dict[str, str]) -> None:
    """proxy_idle_timeout is 3 s in this stack: an upload that stops moving is given up (504), not held open."""
    sock = _upload_head(stack.ports["gateway"], tokens["train"], b"Content-Length: %d" % MiB)
    sock.sendall(b"\x00" * 1000)
    started = time.monotonic()
    status, body = _answer(sock)
    assert status.startswith(b"HTTP/1.1 504 ") and json.loads(body) == {"error": "gateway_timeout"}
    assert 2.5 < time.monotonic() - started < 8


def _introspect_head(port: int, length: int) -> socket.socket:
    """A socket that has sent the head of a `POST /_mltokens/introspect` with a body of `length` bytes."""
    basic = base64.b64encode(f"gateway:{SECRET}".encode())
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /_mltokens/introspect HTTP/1.1\r\nHost: x\r\nAuthorization: Basic %s\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % (basic, length)
    )
    return sock


def test_the_proxys_introspect_endpoint_reads_a_body_that_comes_in_pieces(stack: Stack, tokens: dict[str, str]) -> None:
    """The form body arrives in two writes 0.3 s apart: it is read whole (a cut one would be `tok`: a 400)."""
    body = b"token=" + tokens["predict"].encode()
    sock = _introspect_head(stack.ports["gateway"], len(body))
    sock.sendall(body[:3])
    time.sleep(0.3)
    sock.sendall(body[3:])
    status, answer = _answer(sock)
    assert status.startswith(b"HTTP/1.1 200 "), (status, answer)
    assert json.loads(answer)["active"] is True and json.loads(answer)["username"] == "alice"


def test_the_proxy_answers_an_introspect_body_past_its_bound_at_once_and_closes(stack: Stack) -> None:
    """The rest of a body past `introspection.max_body` is not waited for: 400 at once, and the connection
    to be closed (after aiohttp's lingering close), while the client still owes most of its declared length."""
    sock = _introspect_head(stack.ports["gateway"], 10 * MiB)
    sock.sendall(b"token=" + b"a" * 100_000)
    started = time.monotonic()
    head, body = _head_and_body(sock)
    assert head.startswith(b"HTTP/1.1 400 ") and body == b'{"error":"invalid_request"}\n', (head, body)
    assert b"\r\nConnection: close" in head and time.monotonic() - started < 5


def test_a_stalled_body_to_the_proxys_introspect_endpoint_is_cut_at_the_idle_timeout(stack: Stack) -> None:
    """proxy_idle_timeout is 3 s in this stack: a body that never comes whole is a 408, not a handler held open."""
    sock = _introspect_head(stack.ports["gateway"], 100)
    sock.sendall(b"token=abc")
    started = time.monotonic()
    status, body = _answer(sock)
    assert status.startswith(b"HTTP/1.1 408 ") and json.loads(body) == {"error": "request_timeout"}, (status, body)
    assert 2.5 < time.monotonic() - started < 8


def test_a_dripped_body_to_the_proxys_introspect_endpoint_is_cut_at_one_deadline(stack: Stack) -> None:
    """A byte a second never lets `proxy_idle_timeout` (3 s here) pass without one: the body as a whole
    still gets only that long (a per-read timer would wait for all 100 bytes)."""
    sock = _introspect_head(stack.ports["gateway"], 100)
    started = time.monotonic()
    sock.settimeout(1)
    answer = b""
    for byte in b"token=" + b"a" * 94:
        sock.sendall(bytes([byte]))
        try:
            answer = sock.recv(65536)
        except TimeoutError:
            continue
        break
    assert answer.startswith(b"HTTP/1.1 408 ") and answer.endswith(b'{"error":"request_timeout"}\n'), answer
    assert 2.5 < time.monotonic() - started < 8
    sock.close()


def test_websocket_passes_on_a_websocket_route_only(stack: Stack, tokens: dict[str, str]) -> None:
    url = stack.gateway_url.replace("http://", "ws://") + "/v1/models/sentiment/live"
    spoofed = {**_auth(tokens["predict"]), "X-Auth-Roles": "admin", "X_Auth_Roles": "admin"}
    with connect(url, additional_headers=spoofed, open_timeout=5) as ws:
        caller = json.loads(ws.recv(timeout=5))
        assert caller["x-auth-subject"] == "u-alice" and caller["x-auth-roles"] == "model:sentiment:predict"
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01" * 40000)
        assert ws.recv(timeout=5) == b"\x00\x01" * 40000
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=5)
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as no_websocket:  # /v1/models allows GET, not an upgrade
        connect(
            stack.gateway_url.replace("http://", "ws://") + "/v1/models", additional_headers=_auth(tokens["predict"])
        )
    assert no_websocket.value.response.status_code == 403


def test_forwarded_headers_and_an_upstream_that_is_down(stack: Stack, tokens: dict[str, str]) -> None:
    """What the upstream sees (a WSGI echo): identity, this hop's forwarding headers, no client claims."""
    echo_port, port = free_port(), free_port()
    echo = start(wsgi_echo_spec(echo_port), stack.workdir / "logs")
    command = mltokens(stack.config, "proxy", "--upstream", f"http://127.0.0.1:{echo_port}", "--port", str(port))
    proxy: Running | None = None
    try:
        proxy = start(ServiceSpec("proxy-echo", command, f"http://127.0.0.1:{port}/_mltokens/readyz"), stack.workdir)
        sent = {
            **_auth(tokens["predict"]),
            "X-Forwarded-For": "6.6.6.6",
            "Forwarded": "for=6.6.6.6",
            "X-Real-IP": "6.6.6.6",
            "X-Client-IP": "6.6.6.6",
            "X-Original-URL": "/v1/models/vision/train",
            "X-HTTP-Method-Override": "DELETE",
            "X-Method-Override": "DELETE",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "hop",
            "X-Custom": "kept",
        }
        r = requests.post(f"http://127.0.0.1:{port}/v1/models/sentiment/predict?q=1", headers=sent, timeout=5)
        assert r.status_code == 200, r.text
        environ = r.json()
        assert environ["HTTP_X_FORWARDED_FOR"] == "127.0.0.1" and environ["HTTP_X_FORWARDED_PROTO"] == "http"
        assert environ["HTTP_X_FORWARDED_HOST"] == f"127.0.0.1:{port}"
        assert environ["HTTP_FORWARDED"] == f'for="127.0.0.1";proto=http;host="127.0.0.1:{port}"'
        assert "HTTP_X_REAL_IP" not in environ and "HTTP_X_HOP" not in environ and "HTTP_AUTHORIZATION" not in environ
        overrides = ("HTTP_X_CLIENT_IP", "HTTP_X_ORIGINAL_URL", "HTTP_X_HTTP_METHOD_OVERRIDE", "HTTP_X_METHOD_OVERRIDE")
        assert not [name for name in overrides if name in environ]  # the upstream acts on the decided request
        assert environ["HTTP_X_CUSTOM"] == "kept"
        assert environ["HTTP_X_AUTH_SUBJECT"] == "u-alice"
        echo.stop()
        r = requests.post(f"http://127.0.0.1:{port}/v1/models/sentiment/predict", headers=_auth(tokens["predict"]))
        assert r.status_code == 502 and r.json() == {"error": "bad_gateway"}
        # an upload still on its way: the 502 at once, and its connection to be closed (the rest of the body unread)
        sock = _upload_head(port, tokens["train"], b"Content-Length: %d" % (10 * MiB))
        sock.sendall(b"x" * 1000)
        started = time.monotonic()
        head, body = _head_and_body(sock)
        assert head.startswith(b"HTTP/1.1 502 ") and body == b'{"error":"bad_gateway"}\n', (head, body)
        assert b"\r\nConnection: close" in head and time.monotonic() - started < 5
        assert requests.get(f"http://127.0.0.1:{port}/_mltokens/healthz", timeout=5).status_code == 200
    finally:
        if proxy is not None:
            proxy.stop()
        echo.stop()


LIMIT = MiB  # proxy_max_body_size of the `limited` proxy


@pytest.fixture(scope="module")
def limited(stack: Stack) -> Iterator[tuple[int, int]]:
    """A second proxy in front of the same model API with a metrics listener and a 1 MiB body limit:
    its port and its metrics port."""
    port, metrics_port = free_port(), free_port()
    command = mltokens(stack.config, "proxy", "--upstream", stack.model_api_url, "--port", str(port))
    env = {
        "MLTOKENS_VALIDATOR_PROXY_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "MLTOKENS_VALIDATOR_PROXY_MAX_BODY_SIZE": str(LIMIT),
    }
    proxy = start(
        ServiceSpec("proxy-limited", command, f"http://127.0.0.1:{port}/_mltokens/readyz", env), stack.workdir
    )
    yield port, metrics_port
    proxy.stop()


def test_metrics_are_never_served_to_the_proxy_port(
    stack: Stack, tokens: dict[str, str], limited: tuple[int, int]
) -> None:
    port, metrics_port = limited
    for base in (stack.gateway_url, f"http://127.0.0.1:{port}"):  # metrics off (the default), then on
        for path in ("/_mltokens/metrics", "/_mltokens/metrics?format=text"):
            for headers in ({}, _auth(tokens["predict"])):
                r = requests.get(base + path, headers=headers, timeout=5)
                assert r.status_code == 404 and r.json() == {"error": "not_found"}, (base, path, r.text)
                assert b"mltokens_validator" not in r.content
    # the configured listener serves them, counting what went through the proxy
    assert requests.post(f"http://127.0.0.1:{port}" + "/v1/models/sentiment/predict", timeout=5).status_code == 401
    r = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert 'mltokens_validator_decisions_total{reason="missing_token",status="401"}' in r.text
    # and nothing else: it is no second way into the model API
    for path in ("/v1/models/sentiment/predict", "/_mltokens/healthz", "/metrics/../v1/models"):
        r = requests.post(f"http://127.0.0.1:{metrics_port}{path}", headers=_auth(tokens["predict"]), timeout=5)
        assert r.status_code == 404 and r.json() == {"error": "not_found"}


def _upload_head(port: int, token: str, *head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"PUT /v1/models/sentiment/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n%s\r\n"
        % (token.encode(), b"".join(h + b"\r\n" for h in head))
    )
    return sock


def _head_and_body(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head and the body of the one answer on `sock` (its body one line: the proxy's JSON, or none)."""
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
        more = sock.recv(65536)
        if not more:
            break
        data += more
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def _answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """The status line and the body of the one answer on `sock` (the proxy closes after a 413)."""
    head, body = _head_and_body(sock)
    return head.split(b"\r\n", 1)[0], body


def test_a_body_over_the_limit_is_refused_with_413(limited: tuple[int, int], tokens: dict[str, str]) -> None:
    port, train = limited[0], tokens["train"]
    url = f"http://127.0.0.1:{port}/v1/models/sentiment/upload"
    r = requests.put(url, data=b"\x00" * LIMIT, headers=_auth(train), timeout=30)  # at the limit: passes
    assert r.status_code == 200 and r.json()["bytes"] == LIMIT
    # a declared length over it: 413 at once, before `100 Continue` (the body is never asked for)
    sock = _upload_head(port, train, b"Content-Length: %d" % (LIMIT + 1), b"Expect: 100-continue")
    status, body = _answer(sock)
    assert status.startswith(b"HTTP/1.1 413 ") and json.loads(body) == {"error": "content_too_large"}
    # ... and a client that sends the body anyway gets the same
    sock = _upload_head(port, train, b"Content-Length: %d" % (4 * LIMIT))
    sock.sendall(b"\x00" * (4 * LIMIT))
    status, body = _answer(sock)
    assert status.startswith(b"HTTP/1.1 413") and json.loads(body) == {"error": "content_too_large"}

    def chunks(count: int) -> Iterator[bytes]:  # no length: chunked transfer coding
        for _ in range(count):
            yield b"\x00" * (LIMIT // 4)

    r = requests.put(url, data=chunks(4), headers=_auth(train), timeout=30)
    assert r.status_code == 200 and r.json()["bytes"] == LIMIT
    # chunked past the limit: cut where it passes it, the upstream request abandoned, 413
    r = requests.put(url, data=chunks(12), headers=_auth(train), timeout=30)
    assert r.status_code == 413 and r.json() == {"error": "content_too_large"}
    assert r.headers["Connection"] == "close"
    # the limit is checked before the decision (as nginx does): nothing is decided, counted or forwarded
    r = requests.put(url, data=b"\x00" * (LIMIT + 1), timeout=30)
    assert r.status_code == 413


class RawUpstream(threading.Thread):
    """An HTTP/1.1 upstream written byte by byte, for the answers a framework never sends: an interim
    103, a body delimited by the connection's close, a keep-alive connection closed under the proxy,
    two answers to one request, an HTTP/1.0 keep-alive answer, garbage, a reset mid-body.
    `GET /healthz?<case>` (an anonymous route) picks the answer; `connections` counts accepted ones,
    `cases` the requests received. An upload is refused at once (507), unless its case is `record`:
    then its body is read as it comes and `uploads` holds it (`Upload`), ended cleanly or broken off.
    `tls`: the same over TLS (https)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(daemon=True)
        self.tls = tls
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.cases: list[bytes] = []
        self.uploads: list[Upload] = []

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as HTTP servers do: no answer held back
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        answered = 0
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):  # a client that does not trust the certificate
                conn.close()
                return
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                head, _, data = data.partition(b"\r\n\r\n")
                request_line = head.split(b"\r\n", 1)[0]
                method, target = request_line.split(b" ")[:2]
                case = target.partition(b"?")[2]
                self.cases.append(case)
                if target.startswith(b"/v1/models/sentiment/upload") and case == b"record":
                    upload = Upload(head, data)
                    self.uploads.append(upload)
                    if upload.receive(conn):
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                    return
                if target.startswith(b"/v1/models/sentiment/upload"):  # refused at once, the body left unread
                    conn.sendall(
                        b"HTTP/1.1 507 Insufficient Storage\r\nContent-Length: 4\r\nConnection: close\r\n\r\nfull"
                    )
                    return
                if case == b"stale" and answered:  # a keep-alive connection the upstream closes as the request comes
                    return
                if case == b"garbage" and answered:  # the request reached the upstream, which answers no HTTP
                    conn.sendall(b"SPDY/3 200 OK\r\n\r\n")
                    return
                if case == b"hints-then-close" and answered:  # it began answering, then went away
                    conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                    return
                if case == b"reset":  # a body delimited by the close, broken off by a reset
                    conn.sendall(b"HTTP/1.1 200 Fine\r\nContent-Type: text/plain\r\n\r\n" + b"partial " * 1000)
                    time.sleep(0.3)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if case == b"http10":  # HTTP/1.0 with keep-alive: nginx closes such a connection, so does the proxy
                    conn.sendall(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\n1.0!")
                    answered += 1
                    continue
                if case == b"twice":  # a second answer right after the first one, in the same write
                    conn.sendall(
                        b"HTTP/1.1 200 Fine\r\nX-Case: twice\r\nContent-Length: 5\r\n\r\nfirst"
                        b"HTTP/1.1 404 Smuggled\r\nX-Case: second\r\nContent-Length: 6\r\n\r\nsecond"
                    )
                    answered += 2
                    continue
                if case in (b"bytes", b"bytes-streamed"):  # UTF-8 bytes, no Server, no Content-Type
                    head = b"HTTP/1.1 200 Caf\xc3\xa9\r\nX-Name: caf\xc3\xa9 \xe6\x97\xa5\r\n"
                    if case == b"bytes":
                        conn.sendall(head + b"Content-Length: 2\r\n\r\nok")
                    else:  # the rest of the body later: streamed back
                        conn.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
                        time.sleep(0.3)
                        conn.sendall(b"0\r\n\r\n")
                    answered += 1
                    continue
                body = b"answer %d on connection %d" % (answered, self.connections)
                if case == b"slow":
                    time.sleep(0.6)
                if case == b"early-hints":
                    conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
                if case == b"until-close":
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body * 1000)
                    return
                length = b"Content-Length: %d\r\n" % len(body)
                conn.sendall(
                    b"HTTP/1.1 200 Fine\r\nX-Case: %s\r\n%s\r\n%s" % (case, length, b"" if method == b"HEAD" else body)
                )
                answered += 1

    def stop(self) -> None:
        self.server.close()


class Upload:
    """A request body as an upstream receives it: `raw` (its framing included) grows as bytes come;
    `ended` is True once it is whole (its Content-Length, or the closing chunk), False if the connection
    closed before, None while it is on its way."""

    def __init__(self, head: bytes, data: bytes) -> None:
        self.raw = data
        lines = head.lower().split(b"\r\n")
        lengths = [int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:")]
        self.length = lengths[0] if lengths else None
        self.ended: bool | None = None

    def whole(self) -> bool:
        if self.length is not None:
            return len(self.raw) >= self.length
        return self.raw.startswith(b"0\r\n\r\n") or b"\r\n0\r\n\r\n" in self.raw  # test bodies: no such bytes

    def receive(self, conn: socket.socket) -> bool:
        """Read until the body is whole (True) or the connection closes (False)."""
        while not self.whole():
            try:
                more = conn.recv(65536)
            except OSError:
                more = b""
            if not more:
                self.ended = False
                return False
            self.raw += more
        self.ended = True
        return True


@pytest.fixture(scope="module")
def raw(stack: Stack) -> Iterator[tuple[RawUpstream, int]]:
    """A proxy in front of `RawUpstream`: the upstream and the proxy's port."""
    upstream, port = RawUpstream(), free_port()
    upstream.start()
    command = mltokens(stack.config, "proxy", "--upstream", f"http://127.0.0.1:{upstream.port}", "--port", str(port))
    proxy = start(ServiceSpec("proxy-raw", command, f"http://127.0.0.1:{port}/_mltokens/readyz"), stack.workdir)
    yield upstream, port
    proxy.stop()
    upstream.stop()


@pytest.fixture(scope="module")
def raw_tls(stack: Stack) -> Iterator[tuple[RawUpstream, int, int]]:
    """`RawUpstream` over TLS with a certificate from a private CA, behind a proxy configured with
    that CA and behind one that trusts only the system's authorities: the upstream and the two ports."""
    ca, server = authority_and_server(stack.workdir)
    upstream, port, untrusting = RawUpstream(server), free_port(), free_port()
    upstream.start()
    proxies = []
    for name, listen, env in (
        ("proxy-tls", port, {"MLTOKENS_VALIDATOR_PROXY_UPSTREAM_CA_FILE": str(ca)}),
        ("proxy-tls-untrusting", untrusting, {}),
    ):
        command = mltokens(
            stack.config, "proxy", "--upstream", f"https://localhost:{upstream.port}", "--port", str(listen)
        )
        spec = ServiceSpec(name, command, f"http://127.0.0.1:{listen}/_mltokens/readyz", env)
        proxies.append(start(spec, stack.workdir))
    yield upstream, port, untrusting
    for proxy in proxies:
        proxy.stop()
    upstream.stop()


def test_an_https_upstream_is_verified_against_the_configured_authorities(
    raw_tls: tuple[RawUpstream, int, int],
) -> None:
    upstream, port, untrusting = raw_tls
    url = f"http://127.0.0.1:{port}/healthz"
    with requests.Session() as session:
        first = session.get(url + "?keep", timeout=5)
        assert (first.status_code, first.reason, first.headers["X-Case"]) == (200, "Fine", "keep")
        before = upstream.connections
        answers = [session.get(url + "?keep", timeout=5).text for _ in range(3)]
    assert upstream.connections == before, "a keep-alive TLS connection to the upstream was not reused"
    n = int(first.text.split()[1])
    assert [int(a.split()[1]) for a in answers] == [n + 1, n + 2, n + 3]
    r = requests.get(url + "?until-close", timeout=5)  # a body the close of the TLS connection ends
    assert r.status_code == 200 and r.text.count(" on connection ") == 1000
    # the same upstream behind a proxy that trusts the system's authorities only: never reached
    cases = len(upstream.cases)
    r = requests.get(f"http://127.0.0.1:{untrusting}/healthz?keep", timeout=5)
    assert r.status_code == 502 and r.json() == {"error": "bad_gateway"}
    assert len(upstream.cases) == cases


def test_answers_a_framework_never_sends_pass_through(raw: tuple[RawUpstream, int]) -> None:
    upstream, port = raw
    url = f"http://127.0.0.1:{port}/healthz"
    r = requests.get(url + "?early-hints", timeout=5)  # the interim 103 is not the answer
    assert r.status_code == 200 and r.reason == "Fine" and r.headers["X-Case"] == "early-hints"
    assert r.text.startswith("answer 0 on connection")
    r = requests.get(url + "?until-close", timeout=5)  # no length, no chunks: the body ends with the connection
    assert r.status_code == 200 and r.text.count(" on connection ") == 1000 and len(set(r.text.split("answer"))) == 2
    r = requests.head(url + "?head", timeout=5)  # a length and no body: answered at once, nothing waited for
    assert r.status_code == 200 and r.headers["X-Case"] == "head" and r.content == b""
    assert requests.get(url + "?after-head", timeout=5).headers["X-Case"] == "after-head"


def test_answer_headers_pass_as_sent(raw: tuple[RawUpstream, int]) -> None:
    """UTF-8 header bytes and reason phrase go back byte for byte (not read as Latin-1 and sent as UTF-8),
    and no `Server` or `Content-Type` of aiohttp's is added to an answer that had none, whole or streamed."""
    for case in (b"bytes", b"bytes-streamed"):
        head, _ = _exchange(raw[1], b"GET /healthz?%s HTTP/1.1\r\nHost: x\r\n\r\n" % case)
        assert head.startswith(b"HTTP/1.1 200 Caf\xc3\xa9\r\n") and b"\r\nX-Name: caf\xc3\xa9 \xe6\x97\xa5\r\n" in head
        assert b"\r\nserver:" not in head.lower() and b"\r\ncontent-type:" not in head.lower(), (case, head)


def test_keep_alive_connections_are_reused_and_a_stale_one_retried(raw: tuple[RawUpstream, int]) -> None:
    upstream, port = raw
    url = f"http://127.0.0.1:{port}/healthz"
    with requests.Session() as session:
        first = session.get(url + "?keep", timeout=5).text
        before = upstream.connections
        answers = [session.get(url + "?keep", timeout=5).text for _ in range(5)]
    assert upstream.connections == before, "a keep-alive connection to the upstream was not reused"
    n = int(first.split()[1])  # answers on one connection are numbered
    assert [int(a.split()[1]) for a in answers] == [n + 1, n + 2, n + 3, n + 4, n + 5]
    # the upstream closes a pooled connection as the next request arrives: a GET is sent again on a new one
    assert requests.get(url + "?stale", timeout=5).status_code == 200
    r = requests.get(url + "?stale", timeout=5)
    assert r.status_code == 200 and r.text.startswith("answer 0 on connection")
    assert upstream.connections == before + 2


def test_a_second_answer_to_one_request_is_not_taken_and_ends_the_connection(raw: tuple[RawUpstream, int]) -> None:
    upstream, port = raw
    url = f"http://127.0.0.1:{port}/healthz"
    r = requests.get(url + "?twice", timeout=5)
    assert (r.status_code, r.reason, r.headers["X-Case"], r.text) == (200, "Fine", "twice", "first")
    before = upstream.connections
    assert requests.get(url + "?keep", timeout=5).status_code == 200
    assert upstream.connections == before + 1


def test_an_http10_answer_ends_its_connection(raw: tuple[RawUpstream, int]) -> None:
    """Even one saying keep-alive (nginx treats an HTTP/1.0 upstream so)."""
    upstream, port = raw
    url = f"http://127.0.0.1:{port}/healthz"
    assert requests.get(url + "?keep", timeout=5).status_code == 200
    before = upstream.connections
    r = requests.get(url + "?http10", timeout=5)  # on the pooled connection of `keep`
    assert r.status_code == 200 and r.text == "1.0!"
    assert requests.get(url + "?keep", timeout=5).status_code == 200
    assert upstream.connections == before + 1


def test_a_reset_is_no_end_of_a_body_delimited_by_the_close(raw: tuple[RawUpstream, int]) -> None:
    """The client's connection is cut short: the broken-off body is not passed on as whole."""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(f"http://127.0.0.1:{raw[1]}/healthz?reset", timeout=5)  # reads the body: it raises


def test_only_a_pooled_connection_closed_without_a_byte_of_answer_is_retried(raw: tuple[RawUpstream, int]) -> None:
    """A retry is for a connection the upstream closed before the request reached it; an upstream that
    answered garbage or began answering has the request: it is not sent twice (502)."""
    upstream, port = raw
    url = f"http://127.0.0.1:{port}/healthz"
    for case in ("garbage", "hints-then-close"):
        assert requests.get(url + "?keep", timeout=5).status_code == 200  # a pooled connection for the next
        r = requests.get(f"{url}?{case}", timeout=5)
        assert r.status_code == 502 and r.json() == {"error": "bad_gateway"}, (case, r.status_code)
        assert upstream.cases.count(case.encode()) == 1, case
    assert requests.get(url + "?keep", timeout=5).status_code == 200
    assert requests.get(url + "?stale", timeout=5).status_code == 200  # the one case retried
    assert upstream.cases[-2:] == [b"stale", b"stale"]


def test_a_short_chunked_body_goes_up_with_its_length(stack: Stack, tokens: dict[str, str]) -> None:
    """A chunked body that arrives whole with its head is sent up in one piece, with a Content-Length."""
    with socket.create_connection(("127.0.0.1", stack.ports["gateway"]), timeout=10) as sock:
        sock.sendall(
            b"PUT /v1/models/sentiment/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" % tokens["train"].encode()
        )
        answer = b""
        while b'"bytes"' not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200") and b'"bytes": 11' in answer


def test_an_upstream_that_answers_an_upload_early_is_heard(
    raw: tuple[RawUpstream, int], raw_tls: tuple[RawUpstream, int, int], tokens: dict[str, str]
) -> None:
    """The upstream refuses a 64 MiB upload on its head: its answer reaches the client, the upload
    stops; over plain TCP and over TLS (whose records a reset left unread are decrypted all the same)."""
    for port in (raw[1], raw_tls[1], raw_tls[1], raw_tls[1]):  # TLS thrice: the reset races the answer
        answer = _upload_answered_early(port, tokens["train"])
        assert answer.startswith(b"HTTP/1.1 507 Insufficient Storage") and answer.endswith(b"full"), (port, answer)


def _upload_answered_early(port: int, token: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"PUT /v1/models/sentiment/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Length: %d\r\n\r\n" % (token.encode(), 64 * MiB)
        )
        answer = b""
        with contextlib.suppress(OSError):  # the proxy may close before the client has sent it all
            for _ in range(64):
                sock.sendall(b"\x00" * MiB)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    answer += sock.recv(65536)
                sock.setblocking(True)
                if b"full" in answer:
                    break
        sock.settimeout(10)
        while b"full" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    return answer


def test_the_pool_bound_holds_and_every_way_out_frees_its_slot(
    stack: Stack, raw: tuple[RawUpstream, int], tokens: dict[str, str]
) -> None:
    """proxy_pool_size 1: requests wait for the one connection; answers of every kind, an upload answered
    early and a client that leaves before the answer each give it back (else the last request would hang)."""
    upstream, port = raw[0], free_port()
    command = mltokens(stack.config, "proxy", "--upstream", f"http://127.0.0.1:{upstream.port}", "--port", str(port))
    env = {"MLTOKENS_VALIDATOR_PROXY_POOL_SIZE": "1"}
    proxy = start(ServiceSpec("proxy-pool1", command, f"http://127.0.0.1:{port}/_mltokens/readyz", env), stack.workdir)
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        for case in ("head", "until-close", "early-hints", "stale", "keep"):
            assert requests.request("HEAD" if case == "head" else "GET", f"{url}?{case}", timeout=5).status_code == 200
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # an upload the upstream refuses
            sock.sendall(
                b"PUT /v1/models/sentiment/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                b"Content-Length: 100\r\n\r\n" % tokens["train"].encode()
            )
            assert sock.recv(65536).startswith(b"HTTP/1.1 507")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # leaves before the answer
            sock.sendall(b"GET /healthz?slow HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.2)
        before = upstream.connections
        started = time.monotonic()
        statuses: list[int] = []
        threads = [
            threading.Thread(target=lambda: statuses.append(requests.get(url + "?slow", timeout=5).status_code))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200, 200]
        assert 1.1 < time.monotonic() - started < 4  # one after the other, on one connection
        assert upstream.connections - before <= 1
    finally:
        proxy.stop()


@pytest.fixture(scope="module", params=["c", "python"])
def patient(request: pytest.FixtureRequest, stack: Stack) -> Iterator[tuple[RawUpstream, int]]:
    """A proxy in front of `RawUpstream` with a 120 s `proxy_idle_timeout` (a 504 cannot pass for a prompt
    answer), once on aiohttp's C HTTP parser and once on its pure-Python one: the upstream and the proxy's port."""
    upstream, port = RawUpstream(), free_port()
    upstream.start()
    command = mltokens(stack.config, "proxy", "--upstream", f"http://127.0.0.1:{upstream.port}", "--port", str(port))
    env = {"MLTOKENS_VALIDATOR_PROXY_IDLE_TIMEOUT": "120s"}
    if request.param == "python":
        env["AIOHTTP_NO_EXTENSIONS"] = "1"
    ready = f"http://127.0.0.1:{port}/_mltokens/readyz"
    proxy = start(ServiceSpec(f"proxy-patient-{request.param}", command, ready, env), stack.workdir)
    yield upstream, port
    proxy.stop()
    upstream.stop()


def _upload_started(upstream: RawUpstream, count: int, first: bytes) -> Upload:
    """The upstream's `count`th upload, once `first` (the body's first bytes, framed) has reached it."""
    deadline = time.monotonic() + 5
    while len(upstream.uploads) < count or first not in upstream.uploads[count - 1].raw:
        assert time.monotonic() < deadline, "the first bytes of the upload never reached the upstream"
        time.sleep(0.02)
    return upstream.uploads[count - 1]


def _upload_ended(upload: Upload) -> bool:
    deadline = time.monotonic() + 5
    while upload.ended is None:
        assert time.monotonic() < deadline, "the upstream's upload was left hanging"
        time.sleep(0.02)
    return upload.ended


@pytest.mark.parametrize(
    "broken",
    [b"zz\r\nhello\r\n0\r\n\r\n", b"3\r\nhello\r\n0\r\n\r\n"],
    ids=["bad-chunk-size-line", "chunk-longer-than-declared"],
)
def test_a_chunked_body_broken_mid_upload_is_answered_400_at_once(
    patient: tuple[RawUpstream, int], tokens: dict[str, str], broken: bytes
) -> None:
    """400 at once (not a 504 after the idle timeout, not a 500), the client's connection closed, and the
    upstream sees its upload broken off: the good chunks, then the close, never the closing chunk."""
    upstream, port = patient
    count = len(upstream.uploads) + 1
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"PUT /v1/models/sentiment/upload?record HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n" % tokens["train"].encode()
        )
        upload = _upload_started(upstream, count, b"5\r\nfirst\r\n")  # streaming: the body is on its way
        sock.sendall(b"6\r\nsecond\r\n" + broken)
        started = time.monotonic()
        sock.settimeout(8)
        answer = b""
        while more := sock.recv(65536):  # to the close (a timeout if the proxy keeps the connection open)
            answer += more
        seconds = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 400 ") and json.loads(body) == {"error": "bad_request"}, (status, body)
    assert seconds < 5, seconds
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # aiohttp's own 400 for the queued parse error: never sent too
    assert _upload_ended(upload) is False, upload.raw
    assert upload.raw.startswith(b"5\r\nfirst\r\n") and b"0\r\n\r\n" not in upload.raw, upload.raw


def test_a_client_that_leaves_mid_upload_leaves_the_upstream_upload_broken_off(
    patient: tuple[RawUpstream, int], tokens: dict[str, str]
) -> None:
    """A client that closes mid-body (with a Content-Length, or chunked): the upstream's connection is closed
    at once, its upload short of its length or with no closing chunk, never made to look whole."""
    upstream, port = patient
    for framing, first in (
        (b"Content-Length: %d" % MiB, b"\x00" * 1000),
        (b"Transfer-Encoding: chunked", b"3\r\nabc\r\n"),
    ):
        count = len(upstream.uploads) + 1
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(
            b"PUT /v1/models/sentiment/upload?record HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n%s\r\n\r\n%s"
            % (tokens["train"].encode(), framing, first)
        )
        upload = _upload_started(upstream, count, first)
        sock.close()
        assert _upload_ended(upload) is False, (framing, upload.raw[-64:])
        assert len(upload.raw) < MiB and b"0\r\n\r\n" not in upload.raw


def test_a_broken_body_to_the_proxys_own_introspect_endpoint_is_answered_400(patient: tuple[RawUpstream, int]) -> None:
    """`/_mltokens/introspect` reads its (small) body itself: one broken before its first byte is a 400 too,
    never a wait with no end."""
    with socket.create_connection(("127.0.0.1", patient[1]), timeout=8) as sock:
        sock.sendall(b"POST /_mltokens/introspect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        time.sleep(0.2)  # the handler is waiting for the body
        sock.sendall(b"zz\r\ntoken\r\n")
        status, body = _answer(sock)
    assert status.startswith(b"HTTP/1.1 400 ") and json.loads(body) == {"error": "bad_request"}, (status, body)


class Logged(NamedTuple):
    method: str
    target: str
    headers: CIMultiDictProxy[str]
    body: bytes


class LoggingUpstream(threading.Thread):
    """An aiohttp upstream that logs every request it reads, its body as it came (never decompressed), and
    answers with the request's target: where it ends a request's body is where a smuggled one would begin."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.port = free_port()
        self.requests: list[Logged] = []
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halt: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._serve())

    async def _answer(self, request: web.BaseRequest) -> web.Response:
        body = await request.read()
        self.requests.append(Logged(request.method, request.raw_path, request.headers, body))
        return web.json_response({"target": request.raw_path})

    async def _serve(self) -> None:
        self._loop, self._halt = asyncio.get_running_loop(), asyncio.Event()
        runner = web.ServerRunner(web.Server(self._answer, auto_decompress=False), handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self.ready.set()
        await self._halt.wait()
        await runner.cleanup()

    def logged_since(self, count: int) -> list[Logged]:
        """The requests after the first `count`, once nothing more has come for a moment."""
        time.sleep(0.3)
        return self.requests[count:]

    def stop(self) -> None:
        assert self._loop is not None and self._halt is not None
        self._loop.call_soon_threadsafe(self._halt.set)
        self.join(5)


@pytest.fixture(scope="module")
def logged(stack: Stack) -> Iterator[tuple[LoggingUpstream, int, Running]]:
    """A proxy in front of `LoggingUpstream`: the upstream, the proxy's port and its process."""
    upstream, port = LoggingUpstream(), free_port()
    upstream.start()
    assert upstream.ready.wait(5)
    command = mltokens(stack.config, "proxy", "--upstream", f"http://127.0.0.1:{upstream.port}", "--port", str(port))
    proxy = start(ServiceSpec("proxy-logged", command, f"http://127.0.0.1:{port}/_mltokens/readyz"), stack.workdir)
    yield upstream, port, proxy
    proxy.stop()
    upstream.stop()


def _compressed_smuggling(encoding: str, smuggled: bytes) -> bytes:
    """A compressed body as long as its decompressed bytes before `smuggled`: decompressed and sent under
    its own Content-Length, it would end where `smuggled` begins, to be read as the next request."""
    prefix = 40
    for _ in range(50):
        body = (
            gzip.compress(b"A" * prefix + smuggled, mtime=0)
            if encoding == "gzip"
            else zlib.compress(b"A" * prefix + smuggled)
        )
        if len(body) == prefix:
            return body
        prefix = len(body)
    raise AssertionError("no compressed body as long as its prefix")


def _exchange(port: int, *pieces: bytes) -> tuple[bytes, bytes]:
    """The head and body of the one answer to a request sent in `pieces` (a pause between two: a body
    that comes after its head is streamed up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(0.2)
            sock.sendall(piece)
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            assert more, data
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        lengths = [int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
        while len(body) < lengths[0] if lengths else not body.endswith(b"0\r\n\r\n"):  # else chunked
            more = sock.recv(65536)
            assert more, data
            body += more
    return head, body


def _json(port: int, head: bytes, body: bytes, *, in_two: bool = False) -> tuple[int, Any]:
    """Status and JSON of the answer to `head` (its Content-Length added) and `body`."""
    head += b"Content-Length: %d\r\n\r\n" % len(body)
    status, answer = _exchange(port, head, body) if in_two else _exchange(port, head + body)
    return int(status.split()[1]), json.loads(answer)


SMUGGLED = b"POST /v1/models/vision/train HTTP/1.1\r\nHost: x\r\nX-Auth-Subject: admin\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_body_goes_up_byte_for_byte_and_smuggles_nothing(
    logged: tuple[LoggingUpstream, int, Running], tokens: dict[str, str], encoding: str
) -> None:
    """A compressed body is never decompressed on its way: the upstream reads the client's bytes under the
    client's Content-Length and Content-Encoding, so a request inside it stays body (past the decision,
    with identity headers of the client's choosing, it would have been one more request), and the next
    client's request on the pooled connection is its own (not the body of a request left half-sent)."""
    upstream, port, _ = logged
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Encoding: %s\r\n" % encoding.encode()
    body = _compressed_smuggling(encoding, SMUGGLED)
    for in_two in (False, True):  # whole with its head, and streamed up
        count = len(upstream.requests)
        assert _json(port, head, body, in_two=in_two) == (200, {"target": "/healthz"})
        seen = upstream.logged_since(count)
        assert [(r.method, r.target, r.body) for r in seen] == [("GET", "/healthz", body)], (in_two, seen)
        assert seen[0].headers["Content-Encoding"] == encoding and seen[0].headers["Content-Length"] == str(len(body))
    # a request left half-sent on a pooled connection would take the next request as its body
    half = _compressed_smuggling(
        encoding, b"POST /v1/models/vision/train HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n"
    )
    count = len(upstream.requests)
    assert _json(port, head, half) == (200, {"target": "/healthz"})
    victim = b"POST /v1/models/sentiment/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n" % (
        tokens["predict"].encode()
    )
    assert _json(port, victim, b"private prompt") == (200, {"target": "/v1/models/sentiment/predict"})
    seen = upstream.logged_since(count)
    assert [(r.method, r.target, r.body) for r in seen] == [
        ("GET", "/healthz", half),
        ("POST", "/v1/models/sentiment/predict", b"private prompt"),
    ]


def test_a_target_with_a_fragment_is_refused(logged: tuple[LoggingUpstream, int, Running]) -> None:
    """A `#` in a request target is no fragment to cut off: the decision would see `/healthz` (anonymous),
    the upstream the whole target (a Go FileServer serves `/healthz#/../v1/models/vision/download` as
    the path it says). Refused, as every non-canonical path; the gateway contracts refuse it too."""
    upstream, port, proxy = logged
    count = len(upstream.requests)
    for target in (b"/healthz#/../v1/models/vision/download", b"/healthz#", b"/healthz?q=1#x"):
        status, body = _exchange(port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        assert status.startswith(b"HTTP/1.1 403 ") and json.loads(body) == {"error": "insufficient_scope"}, target
        assert f"deny 403 bad_path path={target.decode()}" in proxy.log_path.read_text()
    assert upstream.logged_since(count) == []
    header = {"x-original-method": "GET", "x-original-uri": "/healthz#/../v1/models/vision/download"}.get
    with pytest.raises(ContractError):
        original_request("/auth/nginx", "GET", header)
    with pytest.raises(ContractError):
        original_request("/auth/envoy/healthz#/../v1/models/vision/download", "GET", header)


def test_a_host_header_that_is_no_host_is_refused_400(logged: tuple[LoggingUpstream, int, Running]) -> None:
    """The client's Host goes into X-Forwarded-Host and Forwarded: one that is no host name or address
    (RFC 9110 7.2) is answered 400 (RFC 9112 3.2), never a 500; a valid one goes up as it came."""
    upstream, port, proxy = logged
    count = len(upstream.requests)
    for host in ("日".encode(), b"\xe9", b"a b", b'a"b', b"a:b:c"):
        status, body = _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        assert status.startswith(b"HTTP/1.1 400 ") and json.loads(body) == {"error": "bad_request"}, (host, status)
    assert upstream.logged_since(count) == []
    assert "Traceback" not in proxy.log_path.read_text(errors="replace")
    status, _ = _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200 ")
    assert upstream.requests[-1].headers["X-Forwarded-Host"] == "[::1]:8080"


def test_a_bad_websocket_handshake_is_refused_before_the_upstream_is_asked(
    logged: tuple[LoggingUpstream, int, Running], tokens: dict[str, str]
) -> None:
    upstream, port, _ = logged
    count = len(upstream.requests)
    token = tokens["predict"].encode()
    for handshake in (
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",  # no key
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    ):
        head, body = _exchange(
            port,
            b"GET /v1/models/sentiment/live HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n%s\r\n"
            % (token, handshake),
        )
        assert head.startswith(b"HTTP/1.1 400 ") and json.loads(body) == {"error": "bad_request"}, (handshake, head)
    assert upstream.logged_since(count) == []


def test_the_connection_of_a_declined_upgrade_is_closed_after_its_answer(
    logged: tuple[LoggingUpstream, int, Running],
) -> None:
    """aiohttp's parser takes what follows an upgrade request for the upgraded stream: a request pipelined
    behind it would be left unanswered on an open connection. It is closed after the answer instead."""
    with socket.create_connection(("127.0.0.1", logged[1]), timeout=5) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n"
            b"GET /healthz?second HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answers = b""
        while more := sock.recv(65536):  # to the close (a timeout if the connection is left open)
            answers += more
    assert answers.startswith(b"HTTP/1.1 200 ") and b'{"target": "/healthz"}' in answers, answers


def test_a_request_aiohttp_cannot_parse_gets_the_constant_400(
    logged: tuple[LoggingUpstream, int, Running], tokens: dict[str, str]
) -> None:
    """aiohttp's own 400 quotes the bad line back: an Authorization header with it."""
    token = tokens["predict"].encode()
    for bad in (b"Authorization: Bearer %s\x00\r\n" % token, b"Authorization: Bearer %s\r\nBad\x01Name: y\r\n" % token):
        head, body = _exchange(logged[1], b"GET /healthz HTTP/1.1\r\nHost: x\r\n%s\r\n" % bad)
        assert head.startswith(b"HTTP/1.0 400 ") and body == b'{"error":"bad_request"}\n', (head, body)
