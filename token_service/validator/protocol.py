"""HTTP/1.1 for gateway sub-requests: the validator's own protocol, parsed by httptools.

A decision request is a few headers in and a few headers out. Through ASGI (or RSGI)
each one builds a scope, a task and response events, which cost more than the decision
itself (docs/benchmarks.md). This protocol parses with httptools (llhttp), calls
`Validator.respond` from the parser's callback and writes each response with one send.
uvicorn still runs the process around it: sockets, workers and their respawn, signals,
graceful shutdown, and the lifespan that starts and stops the `Validator`.

- Requests on a connection are answered in order, pipelined ones included; a response
  that must wait (key refetch, Redis) holds back those behind it, and reading pauses.
- Answers are queued and written once the event loop has handled every connection that
  was ready in the same pass (`Outbox`: one `call_soon` a pass), a connection's queued answers with one write:
  Envoy writes the same way (its `ConnectionImpl::write` buffers and activates a write
  event). Under load a pass's answers reach the clients together, and the work of waking
  a client up is paid once a pass rather than once an answer (docs/benchmarks.md,
  "Answers written at the end of the loop's pass"); with one request at a time the
  answer goes out as soon as its pass ends.
- A request head larger than the token limit plus 64 KiB gets 431; a malformed request or
  a repeated Authorization or original-request header gets 400; each then closes. A
  request asking for an upgrade (a WebSocket route's sub-request) is decided, never
  upgraded, and the connection closed after the answer.
- A request that has not fully arrived `request_timeout` seconds after its first byte is
  dropped (slow clients): one absolute deadline per request, which bytes arriving later
  never move; a connection idle for `timeout_keep_alive` is closed.
- Bodies (Envoy can forward one) are read and dropped, except an RFC 7662 introspection
  request's (`/introspect`), kept up to `introspection.max_body`. HEAD responses carry no body.
- A request whose decision inputs (method, target, decision headers) were allowed before is
  answered again without deciding anew while `Decider.current` finds the cached token's state
  unchanged (`_DECIDED`: keyed by the SHA-256 of the Authorization header, never the token);
  counted in the metrics and usage as any decision (docs/validator.md, "Answers decided before").
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections import deque
from collections.abc import Awaitable
from typing import Any

import httptools

from . import introspection
from .answers import Remembered
from .app import DECISION_HEADERS, INTROSPECT, ASGIApp, Response, Validator
from .digests import sha256_digest
from .memo import remember
from .reasons import Reason, Refused

log = logging.getLogger(__name__)

# The only headers a decision reads (lower-case bytes → name), each allowed once (app.DECISION_HEADERS).
# Others are counted, not kept.
_DECISION_HEADERS = {name.encode(): name for name in DECISION_HEADERS}
# Header names as sent → the decision header each names ("" for none; "content-type", kept for an
# introspection request's body), per process: found once a spelling, not lower-cased every request.
# Only names of a header's usual length are kept, so a client's long names never fill it with kilobytes.
_HEADER_KEYS: dict[bytes, str] = {}
_HEADER_KEY_ENTRIES = 1024
_HEADER_KEY_NAME_BYTES = 64
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_HEAD_CACHE_ENTRIES = 4096
_CLOSE = b"connection: close\r\n"
_INTROSPECT = INTROSPECT.encode()
_INTROSPECT_QUERY = _INTROSPECT + b"?"
# Encoded header blocks by header tuple, per process: decisions reuse a few tuples (one per cached token).
_ENCODED: dict[tuple[tuple[str, str], ...], bytes] = {}
# The whole answer of an allowed decision (200, no body, kept alive) by header tuple, per process.
_ALLOWED: dict[tuple[tuple[str, str], ...], bytes] = {}
# Allowed decisions by their inputs: (method, target, SHA-256 of the Authorization header, the other
# decision headers) → their answer and the cached token's entry it was decided from. Per process: an
# entry of another validator's is never `current` for this one (its entry is not in this one's cache).
_DECIDED: dict[tuple[bytes, bytes, bytes, tuple[tuple[str, bytes], ...]], Remembered] = {}
_DECIDED_KEY_BYTES = 512  # the target and other decision headers of a request remembered, at most
# Whole requests given again by their bytes: the SHA-256 of a chunk that was exactly one request, answered
# from (or remembered in) `_DECIDED` → that entry. The same bytes parsed from the same state (a message
# boundary) are the same request, so the parser need not run again; a gateway's sub-requests for the same
# call repeat byte for byte (Envoy's ext_authz sends the target, host, content-length and authorization).
_REQUESTS: dict[bytes, Remembered] = {}
_REQUEST_BYTES = 16 * 1024  # longer chunks are never hashed
# After this many chunks in a row that miss `_REQUESTS` without a new decision, a connection parses the next
# `_REQUEST_UNHASHED` chunks without hashing them, twice as many after each further run (up to the most).
_REQUEST_MISSES = 8
_REQUEST_UNHASHED = 64
_REQUEST_UNHASHED_MOST = 4096


def _answer(status: int, headers: tuple[tuple[str, str], ...], length: int, body: bytes, close: bool) -> bytes:
    """An answer's bytes; `length` is the body's (a HEAD answer sends no `body`, but its length)."""
    block = _ENCODED.get(headers)
    if block is None:
        block = remember(
            _ENCODED,
            headers,
            "".join([f"{k}: {v}\r\n" for k, v in headers]).encode("latin-1"),  # one encode, no generator
            _HEAD_CACHE_ENTRIES,
        )
    return b"".join(
        (
            _STATUS_LINES[status],
            b"content-length: %d\r\n" % length,
            block,
            _CLOSE + b"\r\n" if close else b"\r\n",
            body,
        )
    )


def _allowed(headers: tuple[tuple[str, str], ...]) -> bytes:
    """The whole answer of an allowed decision (200, no body, kept alive), kept by header tuple."""
    data = _ALLOWED.get(headers)
    if data is None:
        data = remember(_ALLOWED, headers, _answer(200, headers, 0, b"", False), _HEAD_CACHE_ENTRIES)
    return data


def _header_key(name: bytes) -> str:
    """What a header name not in `_HEADER_KEYS` names, kept there unless the name is long."""
    lower = name.lower()
    key = _DECISION_HEADERS.get(lower) or ("content-type" if lower == b"content-type" else "")
    if len(name) > _HEADER_KEY_NAME_BYTES:
        return key
    return remember(_HEADER_KEYS, name, key, _HEADER_KEY_ENTRIES)


def _introspection(url: bytes) -> bool:
    """Whether a request target is the introspection endpoint's (its query aside)."""
    return url == _INTROSPECT or url.startswith(_INTROSPECT_QUERY)


def _error(status: int) -> bytes:
    return _STATUS_LINES[status] + b"content-length: 0\r\n" + _CLOSE + b"\r\n"


class Outbox:
    """The connections of one server whose answers wait for the end of the loop's pass: each
    `_flush`ed then, by one callback for the pass rather than one a connection. The pass's answers
    are added to uvicorn's count (`total_requests`) then too, once a pass."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server_state: Any) -> None:
        self.loop = loop
        self.server_state = server_state
        self.ready: list[DecisionProtocol] = []
        self.answers = 0  # queued in this pass

    def add(self, protocol: DecisionProtocol) -> None:
        if not self.ready:
            self.loop.call_soon(self.flush)
        self.ready.append(protocol)

    def flush(self) -> None:
        ready, self.ready = self.ready, []
        now = self.loop.time()  # once a pass: each connection written to is idle from now
        for protocol in ready:
            protocol.idle_since = now
            protocol._flush()
        if self.answers:
            self.server_state.total_requests += self.answers
            self.answers = 0


class RequestRefused(Refused):
    """Raised in a parser callback: the request is refused before any decision."""


class DecisionProtocol:
    """One client connection (uvicorn creates one per accepted socket): an asyncio protocol.

    It does not derive from `asyncio.Protocol`: in the compiled build (build.py) `protocol.pxd`
    makes it an extension type with its attributes as C fields, and an extension type cannot
    derive from a Python class. asyncio and uvloop need only the methods."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any] | None = None,
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        app = config.loaded_app
        if not isinstance(app, ASGIApp):
            raise TypeError("DecisionProtocol serves token_service.validator.app:asgi (without proxy_headers)")
        self.validator: Validator = app.validator
        self.decider = self.validator.decider
        self.tally = self.validator.tally
        self.decided_entries = self.validator.settings.cache_size  # no cache, nothing to answer again
        self.loop = _loop or asyncio.get_event_loop()
        self.loop_time = self.loop.time  # bound once: read every request
        self.server_state = server_state
        outbox = getattr(server_state, "outbox", None)  # uvicorn's state, shared by a server's connections
        if outbox is None or outbox.loop is not self.loop:
            outbox = server_state.outbox = Outbox(self.loop, server_state)
        self.outbox: Outbox = outbox
        self.keep_alive = float(config.timeout_keep_alive)
        self.request_timeout = self.validator.settings.request_timeout
        self.max_head = self.validator.settings.max_token_bytes + 64 * 1024
        self.max_body = introspection.max_body(self.validator.settings.max_token_bytes)
        self.body: list[bytes] | None = None  # an introspection request's body, while it arrives
        self.body_size = 0
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # loop time `timer` fires at (`_arm`), read without a call per request
        self.headers: dict[str, bytes] = {}  # the decision headers' raw values
        self.url = b""
        self.head_bytes = 0
        self.started: float | None = None  # loop time the request being received began
        self.deadline = 0.0  # loop time by which that request must have fully arrived
        self.idle_since = 0.0
        self.backlog: deque[tuple[Response | Awaitable[Response], bool, bool]] = deque()
        self.waiting = False  # a response is awaited; later ones queue behind it
        self.writing_paused = False
        self.closing = False
        self.outgoing: list[bytes] = []  # answers queued for `_flush`
        self.flush_due = False  # `_flush` is scheduled
        self.close_after = False  # `_flush` closes the connection after the queued answers
        # `_by_bytes`: the chunk being parsed, its requests completed, and the `_DECIDED` entry its request
        # was answered from (`fresh`: remembered from a new decision); misses in a row, and chunks to parse
        # unhashed now and after the next run of misses
        self.messages = 0
        self.answered: Remembered | None = None
        self.fresh = False
        self.misses = 0
        self.unhashed = 0
        self.unhashed_next = _REQUEST_UNHASHED

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)
        self.idle_since = self.loop.time()
        self._arm(self.idle_since + self.keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        for response, _, _ in self.backlog:
            if not isinstance(response, tuple):
                response.close()  # type: ignore[attr-defined]  # a coroutine never started
        self.backlog.clear()
        self.outgoing.clear()

    def data_received(self, data: bytes) -> None:
        if self.unhashed:
            self.unhashed -= 1
        elif (
            self.started is None  # at a message boundary
            and self.decided_entries
            and not self.waiting
            and not self.closing
            and not self.close_after
            and len(data) <= _REQUEST_BYTES
        ):
            self._by_bytes(data)
            return
        self._feed(data)

    def _by_bytes(self, data: bytes) -> None:
        """Answer a chunk that began at a message boundary again by its bytes, if they were one request
        allowed before (`_REQUESTS`); otherwise parse it, and remember it by its bytes if it was one
        request answered from a `_DECIDED` entry. A run of misses (requests that vary, a request id in
        each) parses the next chunks without hashing them, for longer each time (`_REQUEST_MISSES`)."""
        started = self.decider.monotonic()
        digest = sha256_digest(data)
        entry = _REQUESTS.get(digest)
        if entry is not None and self._give_again(entry, started):
            self.misses = 0
            self.unhashed_next = _REQUEST_UNHASHED
            return
        self.messages = 0
        self.answered = None
        self.fresh = False
        self._feed(data)
        if not self.fresh:  # bytes not seen before, for a decision that is not new
            self.misses += 1
            if self.misses >= _REQUEST_MISSES:
                self.misses = 0
                self.unhashed = self.unhashed_next
                self.unhashed_next = min(2 * self.unhashed_next, _REQUEST_UNHASHED_MOST)
        if self.messages == 1 and self.answered is not None and self.started is None:
            remember(_REQUESTS, digest, self.answered, self.decided_entries)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # raised once an upgrade request is complete, so already decided (`on_message_complete`), its
            # answer (maybe awaited) closing the connection: the bytes after it, if any, are never read
            return
        except httptools.HttpParserError as exc:  # our callbacks' RequestRefused arrives wrapped in this
            cause = exc.__context__
            self._refuse(cause.reason if isinstance(cause, RequestRefused) else Reason.MALFORMED_REQUEST)

    def eof_received(self) -> None:
        """The client closed its side: the answers queued for it are written, then the transport
        closes itself (as with `asyncio.Protocol`'s default)."""
        self._flush()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._update_reading()

    def shutdown(self) -> None:
        """Called by uvicorn on graceful shutdown: close now if idle, else after the pending answers."""
        self.closing = True
        if not self.waiting and self.started is None:
            self._close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.headers = {}
        self.url = b""
        self.head_bytes = 0
        self.body = None
        self.body_size = 0
        self.started = self.loop_time()
        self.deadline = self.started + self.request_timeout
        if self.timer is None or self.timer_at > self.deadline:
            self._arm(self.deadline)  # the idle timer would fire later: hold the request to its own bound

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        key = _HEADER_KEYS.get(name)
        if key is None:
            key = _header_key(name)
        if not key or (key == "content-type" and not _introspection(self.url)):
            return
        if key in self.headers:
            raise RequestRefused(Reason.MALFORMED_REQUEST)
        self.headers[key] = value

    def on_body(self, body: bytes) -> None:
        if self.body is None:
            if not _introspection(self.url):
                return  # read and dropped
            self.body = []
        self.body_size += len(body)
        if self.body_size <= self.max_body:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.started = None
        self.messages += 1
        parser = self.parser
        raw_method = parser.get_method()
        keep_alive = bool(parser.should_keep_alive()) and not parser.should_upgrade()
        body = None
        key = None
        if _introspection(self.url):  # its body kept (none: empty)
            if self.body_size <= self.max_body:
                body = b"".join(self.body or ())
            self.body = None
        elif keep_alive and not self.waiting and not self.closing and self.decided_entries:
            started = self.decider.monotonic()
            key = self._decided_key(raw_method)
            if key is not None and self._answer_again(key, started):
                return
        method = raw_method.decode("latin-1")
        decider = self.decider
        decider.last = None
        response = self.validator.respond(method, self.url.decode("latin-1").split("?", 1)[0], self._header, body)
        if key is not None and decider.last is not None and isinstance(response, tuple):
            self._remember_decided(key, decider.last, response)
        item = (response, method == "HEAD", keep_alive)
        if self.waiting:
            self.backlog.append(item)
        elif isinstance(response, tuple):
            self._write(*item)  # type: ignore[arg-type]
        else:
            self.waiting = True
            self._update_reading()
            task = self.loop.create_task(self._drain(item))
            self.server_state.tasks.add(task)
            task.add_done_callback(self.server_state.tasks.discard)

    # internals

    def _header(self, name: str) -> str | None:
        """A decision header's value (`name` lower-case), as `Validator.respond` reads headers."""
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    def _decided_key(self, method: bytes) -> tuple[bytes, bytes, bytes, tuple[tuple[str, bytes], ...]] | None:
        """The request's decision inputs as a `_DECIDED` key; None without a token or when too large to keep."""
        headers = self.headers
        authorization = headers.get("authorization")
        if authorization is None:
            return None
        size = len(self.url)
        others: tuple[tuple[str, bytes], ...] = ()
        if len(headers) > 1:
            others = tuple([(name, value) for name, value in headers.items() if name != "authorization"])
            for _, value in others:
                size += len(value)
        if size > _DECIDED_KEY_BYTES:
            return None
        return (method, self.url, sha256_digest(authorization), others)

    def _answer_again(self, key: tuple[bytes, bytes, bytes, tuple[tuple[str, bytes], ...]], started: float) -> bool:
        """Answer a request allowed before with the same inputs, if its token's state has not changed since."""
        entry = _DECIDED.get(key)
        if entry is None or not self._give_again(entry, started):
            return False
        self.answered = entry  # for `_by_bytes`, which may remember the chunk by it
        return True

    def _give_again(self, entry: Remembered, started: float) -> bool:
        """Give `entry`'s answer again if its token's state has not changed since it was decided
        (`started`: the request's monotonic time, as the decider reads it)."""
        decider = self.decider
        now = decider.wall()
        if not decider.current(entry.verified, now, started):
            return False
        self.tally.count(entry, now, decider.monotonic() - started)
        if not self.close_after:  # as `_write` (a transport closed meanwhile drops it: `_flush`)
            self._queue(entry.data, False)
        return True

    def _remember_decided(
        self, key: tuple[bytes, bytes, bytes, tuple[tuple[str, bytes], ...]], verified: Any, response: Response
    ) -> None:
        """Keep the answer of an allowed decision without rate limits (the limits are counted each time),
        once `response` is found to be that decision's answer."""
        decision = verified.decision
        if decision.reason is Reason.ALLOWED and not decision.limits and response[1] is decision.headers:
            entry = Remembered(verified, decision.token_id, _allowed(decision.headers))
            remember(_DECIDED, key, entry, self.decided_entries)
            self.answered = entry
            self.fresh = True

    def _count(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > self.max_head:
            raise RequestRefused(Reason.REQUEST_HEAD_TOO_LARGE)

    async def _drain(self, item: tuple[Response | Awaitable[Response], bool, bool]) -> None:
        """Answer an awaited response, then everything queued behind it, in order."""
        while True:
            response, head_only, keep_alive = item
            if not isinstance(response, tuple):
                response = await response
            self._write(response, head_only, keep_alive)
            if not self.backlog:
                break
            item = self.backlog.popleft()
        self.waiting = False
        self._update_reading()
        if self.closing and self.started is None:
            self._close()

    def _write(self, response: Response, head_only: bool, keep_alive: bool) -> None:
        status, headers, body = response
        if self.transport is None or self.transport.is_closing() or self.close_after:
            return  # the client went away while its answer was awaited, or a request before it closes
        close = not keep_alive or (self.closing and not self.backlog)
        if status == 200 and not body and not close:
            data = _allowed(headers)  # a HEAD's is the same: no body
        else:
            data = _answer(status, headers, len(body), b"" if head_only else body, close)
        self._queue(data, close)

    def _queue(self, data: bytes, close: bool) -> None:
        """Send an answer and count it; the connection is idle from its write on (`Outbox.flush`)."""
        self._send(data, close)
        self.outbox.answers += 1

    def _send(self, data: bytes, close: bool) -> None:
        """Queue `data` for `_flush` (and the close after it); nothing is queued after a close."""
        if self.close_after:
            return
        self.outgoing.append(data)
        self.close_after = close
        if not self.flush_due:
            self.flush_due = True
            self.outbox.add(self)

    def _flush(self) -> None:
        """Write the queued answers with one write, then close if one of them said so."""
        self.flush_due = False
        transport = self.transport
        if transport is None or transport.is_closing():
            self.outgoing.clear()  # the client went away meanwhile
            return
        outgoing = self.outgoing
        if outgoing:
            transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))
            outgoing.clear()
        if self.close_after:
            transport.close()

    def _close(self) -> None:
        """Close the connection now, after writing what is queued."""
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def _refuse(self, reason: Reason) -> None:
        log.info("refuse %d %s before a decision", reason.status, reason)
        if self.transport is not None and not self.transport.is_closing():
            self._send(_error(reason.status), True)  # after the answers queued before it

    def _update_reading(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.waiting or self.writing_paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def _arm(self, when: float) -> None:
        """Look at the timeouts at loop time `when` (absolute: a late timer never moves a deadline)."""
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(when, self._check_timeouts)
        self.timer_at = when

    def _check_timeouts(self) -> None:
        """Close a connection idle too long or a request arriving too slowly; otherwise look again later."""
        now = self.loop.time()
        if self.started is not None:
            deadline = self.deadline
        elif self.waiting:
            deadline = now + self.keep_alive
        else:
            deadline = self.idle_since + self.keep_alive
        if now >= deadline:
            self._close()
            return
        self._arm(deadline)
