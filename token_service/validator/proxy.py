"""`mltokens proxy`: the validator inline in front of one model API, no gateway needed.

`python -P -m token_service.validator.proxy` (exec'ed by `mltokens proxy`, like `serve`)
runs one `Validator` (the same settings, policy, revocation feed, keys, limits and usage
counters as `serve`) inside an aiohttp server, and forwards every allowed request to the
upstream with a lean keep-alive HTTP/1.1 client on httptools (token_service/validator/
upstream.py; aiohttp's client cost more than half of the CPU time of a small request, and
is kept for WebSockets only). aiohttp's low-level server is used (no router: the raw
request target is what the decision sees and what the upstream gets).

Each request:

1. `/_mltokens/{healthz,readyz,introspect}` are the validator's own endpoints, never
   forwarded; `/_mltokens/metrics` answers 404: this port faces clients, so metrics are
   served only on a listener of their own (`proxy_metrics_address`, off by default). A
   body larger than `proxy_max_body_size` is refused with 413 before the decision when
   its length is declared, and where it passes the limit when it is chunked.
2. The raw target must be canonical (`contracts.canonical_path`, as for every gateway
   contract: no `#` either), the Host a host (else 400), and the target is decided by
   `Validator.decide` with the request's Authorization header: the one pipeline of the
   gateway contracts and introspection. A refusal is
   answered as the contracts answer it (401/403/429/503 with `WWW-Authenticate`,
   `Retry-After`, a constant JSON body). A WebSocket upgrade is refused (403
   `upgrade_not_allowed`) unless the route's policy rule says `websocket: true`.
3. The upstream request carries the client's headers less: hop-by-hop headers (RFC 9110
   7.6.1: `Connection` and the names it lists, `Keep-Alive`, `TE`, `Trailer`,
   `Transfer-Encoding`, `Upgrade`, `Proxy-*`), `Authorization` (the model API gets the
   identity, not the token), every `X-Auth-*` header and every name with a character
   other than a letter, a digit or `-` (look-alikes a CGI-style backend would read as an
   identity header: docs/gateways.md rule 3), and the client's own `Forwarded` and
   `X-Forwarded-*`/`X-Real-IP`. It adds the decision's identity headers and
   `X-Forwarded-For`/`-Proto`/`-Host` and `Forwarded` describing this hop: the proxy is
   the edge and believes no forwarding header a client sends.
4. The body goes up as the client sent it (never decompressed: `_Server`). A body that
   came whole with the head goes up in the same write as the request's head (a short
   chunked one with its Content-Length); one still on its way streams up as it
   arrives (chunked if the client's was), each piece written once the upstream's socket
   takes more. Answers stream back as they arrive: aiohttp's reader stops reading the
   client's socket past 128 KiB unread, the lean client stops reading the upstream's
   past 128 KiB unread, and aiohttp's writer waits for the client's socket to drain, so
   a slow reader slows the other side down and memory stays bounded. The upstream's
   status, reason and headers come back as they are, less hop-by-hop ones; an interim
   1xx answer is not passed on.
5. Timeouts: `proxy_connect_timeout` to connect (504), `proxy_first_byte_timeout` from
   the end of the upload to the upstream's status line (504), `proxy_idle_timeout` for
   any body read or write that moves no byte (request or response). Upstream
   unreachable or broken → 502; a pooled connection the upstream closed without a byte
   of an answer is retried once on a new one when the method is idempotent and the body was whole. A
   client that goes away cancels its handler, which closes the upstream connection.
6. A request body the client breaks mid-way (a bad chunk-size line, a chunk longer than it
   said) is answered 400 at once and both connections are closed: the upstream sees its
   upload broken off (no closing chunk, fewer bytes than its length), never a clean end.
   aiohttp's C parser tells the body's reader nothing of such an error (it queues a 400
   for after the handler): `_Handler` passes it on to the body (`_Server`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import logging.config
import re
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .app import NOT_FOUND, STARTUP_READY_WITHIN, Response, Validator, freeze_startup_heap, read_bounded
from .contracts import ContractError, Original, canonical_path
from .decision import IDENTITY_HEADERS
from .reasons import Reason
from .server import log_config
from .settings import ValidatorSettings, listen_address
from .upstream import IDEMPOTENT, Exchange, Pool, UpstreamError

log = logging.getLogger("token_service.validator.proxy")

ADMIN_PREFIX = "/_mltokens/"
ADMIN = frozenset({"healthz", "readyz", "metrics", "introspect"})  # `metrics` only answers 404 here
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded from a client: its credential, its claims about earlier hops, identity headers, and
# the headers by which frameworks let a request name another method or path than its own (Symfony's
# X-Original-URL, Express's and Rails' method overrides, ...): the upstream must act on the decided one.
_CLIENT_ONLY = frozenset(
    {
        "authorization",
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "expect",
        "host",
        "x-original-url",
        "x-original-uri",
        "x-original-method",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    }
)
_NAME = re.compile(r"[A-Za-z0-9-]+")
_WEBSOCKET_HEADERS = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)
_JSON = "application/json"
BAD_GATEWAY: Response = (502, (("content-type", _JSON), ("cache-control", "no-store")), b'{"error":"bad_gateway"}\n')
GATEWAY_TIMEOUT: Response = (504, BAD_GATEWAY[1], b'{"error":"gateway_timeout"}\n')
CONTENT_TOO_LARGE: Response = (413, BAD_GATEWAY[1], b'{"error":"content_too_large"}\n')
BAD_REQUEST: Response = (400, BAD_GATEWAY[1], b'{"error":"bad_request"}\n')
REQUEST_TIMEOUT: Response = (408, BAD_GATEWAY[1], b'{"error":"request_timeout"}\n')
INTERNAL_ERROR_BODY = b'{"error":"internal_error"}\n'
WS_MAX_MESSAGE = 16 << 20  # a WebSocket message is held whole while it is relayed: bounded
_RESERVED_CLOSE = frozenset({1005, 1006, 1015})  # close codes never sent in a close frame (RFC 6455 7.4.1)
SHUTDOWN_GRACE = 10.0


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """The header names `Connection` lists: hop-by-hop too (RFC 9110 7.6.1)."""
    values = headers.getall("connection", None)
    if not values:
        return frozenset()
    return frozenset(t.strip().lower() for value in values for t in value.split(","))


def forwarded_headers(
    raw: Iterable[tuple[bytes, bytes]],
    connection: frozenset[str],
    identity: Iterable[tuple[str, str]],
    hop: Iterable[tuple[str, str]],
) -> CIMultiDict[str]:
    """The upstream request's headers: the client's, less what only this hop may say, plus identity and hop."""
    out: CIMultiDict[str] = CIMultiDict()
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1")
        lower = name.lower()
        if (
            lower in HOP_BY_HOP
            or lower in connection
            or lower in _CLIENT_ONLY
            or lower.startswith(("x-auth-", "x-forwarded-"))
            or not _NAME.fullmatch(name)
        ):
            continue
        out.add(name, raw_value.decode("latin-1"))
    for name, value in identity:  # every client copy of these names is gone: adding is enough
        if value and name in _IDENTITY:
            out.add(name, value)
    out.extend(hop)
    return out


_IDENTITY = frozenset(IDENTITY_HEADERS)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# RFC 9110 7.2: uri-host [ ":" port ], uri-host an IP-literal, an IPv4 address or a reg-name (RFC 3986 3.2.2)
_HOST = re.compile(r"(?:\[[A-Za-z0-9\-._~!$&'()*+,;=:]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")


@functools.lru_cache(maxsize=1024)  # a client's requests repeat these three: built once, not per request
def hop_headers(remote: str | None, scheme: str, host: str | None) -> tuple[tuple[str, str], ...] | None:
    """`X-Forwarded-*` and RFC 7239 `Forwarded` for this hop (the client's own are dropped); None if `host`
    (the client's Host) is no host: such a request is refused (RFC 9112 3.2)."""
    if host is not None and not _HOST.fullmatch(host):
        return None
    hop = {"X-Forwarded-Proto": scheme}
    forwarded = [f"proto={scheme}"]
    if remote:
        hop["X-Forwarded-For"] = remote
        forwarded.insert(0, "for=" + _quoted(f"[{remote}]" if ":" in remote else remote))
    if host:
        hop["X-Forwarded-Host"] = host
        forwarded.append("host=" + _quoted(host))
    hop["Forwarded"] = ";".join(forwarded)
    return tuple(hop.items())


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    """The upstream's answer headers as they are, less hop-by-hop ones (RFC 9110 7.6.1).

    aiohttp writes header values as UTF-8: a value read as UTF-8 (ASCII included) goes out byte for byte; one
    that is no UTF-8 (obs-text, RFC 9110 5.5) can only be read as Latin-1, and goes out UTF-8 encoded."""
    raw = tuple(raw)
    connection = frozenset(
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
    )
    headers: CIMultiDict[str] = CIMultiDict()
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1")
        lower = name.lower()
        if lower not in HOP_BY_HOP and lower not in connection:
            try:
                headers.add(name, raw_value.decode())
            except UnicodeDecodeError:
                headers.add(name, raw_value.decode("latin-1"))
    return headers


class _Relayed(web.StreamResponse):
    """The upstream's answer, streamed: with no `Server` or `Content-Type` of aiohttp's where the upstream
    sent none (it adds both by default; a `Date` it adds is RFC 9110 6.6.1's)."""

    async def _prepare_headers(self) -> None:
        headers = self.headers
        absent = [name for name in _DEFAULTED if name not in headers]
        await super()._prepare_headers()
        for name in absent:
            headers.popall(name, None)


class _RelayedWhole(_Relayed, web.Response):
    """The upstream's answer, whole (one write), as `_Relayed`."""


_DEFAULTED = ("Server", "Content-Type")


def _response(answer: Response) -> web.Response:
    status, headers, body = answer
    return web.Response(status=status, headers=CIMultiDict(headers), body=body)


def _closing(answer: Response) -> web.Response:
    """An answer after which the client's connection is closed (the rest of its body is not wanted).

    aiohttp closes it after a lingering close: what the client still sends is read and dropped
    for up to 10 s, so that a reset does not destroy the answer before the client has read it."""
    response = _response(answer)
    response.force_close()
    return response


def _failed(request: web.BaseRequest, answer: Response) -> web.Response:
    """The upstream's failure (502, 504); the client's connection closed if its body is not read to its end
    (otherwise the answer would say keep-alive, and aiohttp would close the connection anyway)."""
    return _response(answer) if request.content.is_eof() else _closing(answer)


def _chunked_too_large() -> web.Response:
    log.info("refused 413: a chunked body grew past proxy_max_body_size")
    return _closing(CONTENT_TOO_LARGE)


class _BodyTooLarge(Exception):
    """A chunked upload grew past `proxy_max_body_size`: abandoned."""


class _BodyBroken(Exception):
    """The client's body broke off: bytes that are not HTTP framing, or the connection lost."""


class _Handler(web.RequestHandler):
    """aiohttp's connection handler, plus: a parse error in the body of the request in flight ends that body,
    and aiohttp's own error answers carry the proxy's constant bodies (`handle_error`).

    aiohttp's C parser (llhttp) raises a mid-body error (a bad chunk-size line, chunk data
    longer than its size) out of `feed_data` and drops the body's reader without a word;
    `data_received` queues a 400 to be answered after the handler returns, so the handler,
    waiting for more body, would wait for `proxy_idle_timeout` and answer 504. The queued
    error is passed on to the body here (its pure-Python parser does so itself): the
    body's reader raises it. aiohttp has no public hook for this; the private names are
    read with `getattr`, so an aiohttp that renames them brings back the idle timeout,
    not a crash (tests/validator/test_proxy.py fails then, on both parsers).
    """

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        request: web.BaseRequest | None = getattr(self, "_current_request", None)
        if request is None or request.content.is_eof() or request.content.exception() is not None:
            return
        for message, _ in getattr(self, "_messages", ()):  # while a body is unfinished, only its error can follow
            error = getattr(message, "exc", None)
            if isinstance(error, HttpProcessingError):
                request.content.set_exception(error)
                return

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (or to a handler's crash), with a constant body:
        aiohttp's own quotes the request's bytes (its Authorization header among them) back to the client."""
        if status >= 500:
            super().handle_error(request, status, exc, message)  # logs it; ConnectionError if an answer began
            return _closing((status, BAD_GATEWAY[1], INTERNAL_ERROR_BODY))
        log.info("refused %d: a request aiohttp could not parse (%s)", status, type(exc).__name__)
        return _closing((status, BAD_GATEWAY[1], BAD_REQUEST[2]))


class _Server(web.Server):
    """aiohttp's low-level server with `_Handler` for each connection (built as `web.Server.__call__` builds
    its own: a change there fails every proxy test at once).

    Request bodies are never decompressed (`auto_decompress=False`, always): the body goes up byte for byte
    as the client sent it, under the client's own Content-Length and Content-Encoding. A decompressed body
    under the compressed one's length would end early upstream, and its rest be read as another request
    (smuggled past the decision), or begin the next pooled request."""

    def __init__(self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs, auto_decompress=False)

    def __call__(self) -> web.RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class Proxy:
    """One worker's proxy: the Validator, the upstream pool (aiohttp's session for WebSockets) and the handler."""

    def __init__(self, validator: Validator, upstream: str) -> None:
        self.validator = validator
        self.settings = validator.settings
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None
        self.pool: Pool | None = None
        self._url = url = URL(self.upstream)
        self._prefix = url.raw_path.rstrip("/")  # an upstream URL's path comes before every request's
        self._host = url.host_port_subcomponent or ""  # the upstream request's Host, as aiohttp's client sets it

    async def start(self) -> None:
        s = self.settings
        url = self._url
        # https: the system's trust store, or the configured CAs only; certificate and host name always verified
        tls = ssl.create_default_context(cafile=s.proxy_upstream_ca_file or None) if url.scheme == "https" else None
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=s.proxy_pool_size, limit_per_host=0, enable_cleanup_closed=True, ssl=tls or True
            ),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.proxy_connect_timeout),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            trust_env=False,
        )
        self.pool = Pool(url.raw_host or "", url.port or 80, tls, s.proxy_pool_size)
        await self.validator.start(STARTUP_READY_WITHIN)

    async def stop(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.session is not None:
            await self.session.close()
        await self.validator.stop()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        response = await self._handle(request)
        if request.message.upgrade and not isinstance(response, web.WebSocketResponse):
            # an upgrade declined: aiohttp's parser took what followed it for the upgraded stream, and a
            # request pipelined behind it would go unanswered on a connection left open; closed instead
            response.force_close()
        return response

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = request.raw_path
        if raw.startswith(ADMIN_PREFIX) and raw[len(ADMIN_PREFIX) :].split("?", 1)[0] in ADMIN:
            return await self._admin(request, "/" + raw[len(ADMIN_PREFIX) :].split("?", 1)[0])
        limit = self.settings.proxy_max_body_size
        if limit and (request.content_length or 0) > limit:  # refused before the decision, as nginx does
            log.info("refused 413: a declared body of %d bytes, more than proxy_max_body_size", request.content_length)
            return _closing(CONTENT_TOO_LARGE)
        started = time.perf_counter()
        authorization = request.headers.getall("authorization", [])
        if len(authorization) > 1:
            return _response(self.validator.refuse(Reason.MALFORMED_HEADER, started, raw))
        websocket = request.headers.get("upgrade", "").lower() == "websocket"
        try:
            original = Original(request.method.upper(), canonical_path(raw))
        except ContractError as exc:
            return _response(self.validator.refuse(exc.reason, started, raw))
        hop = hop_headers(request.remote, request.scheme, request.headers.get("host"))
        if hop is None:  # never copied into X-Forwarded-Host and Forwarded
            log.info("refused 400: a Host header that is no host name or address")
            return _response(BAD_REQUEST)
        if websocket:
            match = self.validator.decider.policy.match(original.method, original.path)
            if match is None or not match.rule.websocket:
                return _response(self.validator.refuse(Reason.UPGRADE_NOT_ALLOWED, started, original.path))
        answer = self.validator.decide(original, authorization[0] if authorization else None, started)
        if not isinstance(answer, tuple):
            answer = await answer
        if answer[0] != 200:
            return _response(answer)
        headers = forwarded_headers(request.raw_headers, _connection_tokens(request.headers), answer[1], hop)
        if websocket:
            return await self._websocket(request, URL(self.upstream + raw, encoded=True), headers)
        return await self._forward(request, headers)

    async def _admin(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        if path == "/metrics":  # the proxy's port faces clients: metrics are on their own listener
            return _response(NOT_FOUND)
        body = None
        if path == "/introspect":
            try:  # one deadline for the whole (small) body: a drip of bytes does not hold the handler longer
                async with asyncio.timeout(self.settings.proxy_idle_timeout):
                    body = await read_bounded(request.content.iter_any(), self.settings.max_token_bytes, drain=False)
            except TimeoutError:
                return _closing(REQUEST_TIMEOUT)
            except Exception:
                if request.content.exception() is None:
                    raise
                return _closing(BAD_REQUEST)  # a broken body (`_Handler`)
        headers = request.headers
        answer = await self.validator.handle(request.method, path, lambda n: headers.get(n), body)
        too_large = path == "/introspect" and body is None  # the rest of it left unread
        return _closing(answer) if too_large else _response(answer)

    async def metrics(self, request: web.BaseRequest) -> web.StreamResponse:
        """The metrics listener (`proxy_metrics_address`): `GET /metrics`, nothing else."""
        if request.raw_path.split("?", 1)[0] != "/metrics":
            return _response(NOT_FOUND)
        return _response(await self.validator.handle(request.method, "/metrics", request.headers.get))

    async def _forward(self, request: web.BaseRequest, headers: CIMultiDict[str]) -> web.StreamResponse:
        """The request through the lean keep-alive client (token_service/validator/upstream.py), the answer
        streamed back. A body that came whole with the head goes up in the same write; one still on its way
        is streamed as it arrives (`_upload`). A reused connection the upstream closed without a byte of
        an answer is retried once on a new one, for an idempotent method whose body was whole."""
        assert self.pool is not None
        s = self.settings
        whole = request.content.is_eof()
        body = request.content.read_nowait() if whole else b""
        if whole and s.proxy_max_body_size and len(body) > s.proxy_max_body_size:  # a short chunked body
            return _chunked_too_large()
        chunked = False
        if request.body_exists and "content-length" not in headers:  # the client's body came chunked
            if whole:
                headers["Content-Length"] = str(len(body))
            else:
                chunked = True
        if not whole and request.headers.get("expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        lines = [("Host", self._host), *headers.items()]
        method, target = request.method, self._prefix + request.raw_path
        for attempt in (1, 2):
            try:
                exchange = await self.pool.exchange(method, target, lines, body, s.proxy_connect_timeout, chunked)
            except TimeoutError:
                log.warning("upstream %s: no connection in time", method)
                return _failed(request, GATEWAY_TIMEOUT)
            except (OSError, UpstreamError) as exc:
                log.warning("upstream unreachable or broken: %s", type(exc).__name__)
                return _failed(request, BAD_GATEWAY)
            try:
                if not whole:
                    await self._upload_until_answered(request, exchange)
                async with asyncio.timeout(s.proxy_first_byte_timeout):  # from the end of the upload
                    await exchange.started
                break
            except _BodyTooLarge:
                self.pool.finish(exchange)
                return _chunked_too_large()
            except _BodyBroken as exc:  # the upstream's connection is closed: its upload ends broken off
                self.pool.finish(exchange)
                log.info("refused 400: the request body broke off (%s)", type(exc.__cause__).__name__)
                return _closing(BAD_REQUEST)
            except TimeoutError:
                self.pool.finish(exchange)
                log.warning("upstream %s: no answer in time, or a body that stalled", method)
                return _failed(request, GATEWAY_TIMEOUT)
            except UpstreamError as exc:
                self.pool.finish(exchange)
                if attempt == 1 and whole and exchange.stale and method in IDEMPOTENT:
                    continue
                log.warning("upstream unreachable or broken: %s", exc)
                return _failed(request, BAD_GATEWAY)
            except BaseException:  # the client went away (the handler is cancelled)
                self.pool.finish(exchange)
                raise
        try:
            return await self._stream_back(request, exchange.status, exchange.reason, exchange.headers, exchange)
        finally:
            self.pool.finish(exchange)  # back to the pool if read to its end, else closed

    async def _upload_until_answered(self, request: web.BaseRequest, exchange: Exchange) -> None:
        """`_upload`, cut short by an upstream that answers (or breaks off) before the body is whole: its
        answer goes back at once, whether the client is sending or not, and the connection is spent."""
        upload = asyncio.ensure_future(self._upload(request, exchange))
        try:
            await asyncio.wait((upload, exchange.started), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not upload.done():
                exchange.keep_alive = False
                upload.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upload
        if not upload.cancelled():
            upload.result()  # _BodyTooLarge, _BodyBroken, TimeoutError: raised here

    async def _upload(self, request: web.BaseRequest, exchange: Exchange) -> None:
        """The client's body up as it arrives, at the pace the upstream takes it, at most `proxy_max_body_size`
        bytes (_BodyTooLarge)."""
        s = self.settings
        size = 0
        async for chunk in _pieces(request.content, s.proxy_idle_timeout):
            size += len(chunk)
            if s.proxy_max_body_size and size > s.proxy_max_body_size:
                raise _BodyTooLarge
            exchange.write(chunk)
            await exchange.drain(s.proxy_idle_timeout)
        exchange.end()

    async def _stream_back(
        self, request: web.BaseRequest, status: int, reason: str | None, raw: Iterable[tuple[bytes, bytes]], body: Body
    ) -> web.StreamResponse:
        headers = response_headers(raw)
        if body.is_eof():  # the whole body came with the head (a small answer): one write
            return _RelayedWhole(status=status, reason=reason, headers=headers, body=body.read_nowait())
        response = _Relayed(status=status, reason=reason, headers=headers)
        try:
            await response.prepare(request)
            async for chunk in _chunks(body, self.settings.proxy_idle_timeout):
                await response.write(chunk)
        except ConnectionResetError:  # the client went away while the answer was being written
            return response
        except (TimeoutError, aiohttp.ClientError, UpstreamError) as exc:
            # the status line is gone: all that is left is to cut the client's connection short
            log.warning("upstream body broken off (%s); closing the client connection", type(exc).__name__)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    async def _websocket(self, request: web.BaseRequest, url: URL, headers: CIMultiDict[str]) -> web.StreamResponse:
        """A WebSocket relayed message by message between the client and the upstream, each side's close passed on."""
        assert self.session is not None
        for name in _WEBSOCKET_HEADERS:
            headers.popall(name, None)
        if not web.WebSocketResponse().can_prepare(request).ok:  # checked before the upstream is asked
            log.info("refused 400: a WebSocket handshake with no key or version, or no `Connection: upgrade`")
            return _response(BAD_REQUEST)
        offered = [p.strip() for p in request.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        try:
            upstream = await self.session.ws_connect(
                url, headers=headers, protocols=offered, autoping=True, max_msg_size=WS_MAX_MESSAGE, compress=0
            )
        except (aiohttp.ClientError, TimeoutError) as exc:  # a refused handshake (WSServerHandshakeError) too
            log.warning("upstream unreachable for a WebSocket: %s", type(exc).__name__)
            return _response(BAD_GATEWAY)
        async with upstream:
            client = web.WebSocketResponse(
                protocols=(upstream.protocol,) if upstream.protocol else (),
                max_msg_size=WS_MAX_MESSAGE,
                autoping=True,
            )
            await client.prepare(request)
            relays = [
                asyncio.ensure_future(_relay(client, upstream)),
                asyncio.ensure_future(_relay(upstream, client)),
            ]
            try:
                await asyncio.wait(relays, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for relay in relays:
                    relay.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await relay
                await client.close()
        return client


class Body(Protocol):
    """An answer's body as `_stream_back` reads it: aiohttp's StreamReader or the lean client's Exchange."""

    def is_eof(self) -> bool: ...
    def at_eof(self) -> bool: ...
    def read_nowait(self) -> bytes: ...
    async def readany(self) -> bytes: ...


async def _chunks(stream: Body | aiohttp.StreamReader, idle: float) -> AsyncIterator[bytes]:
    """A body's pieces as they arrive; a wait that moves no byte for `idle` seconds raises TimeoutError.

    What has arrived already is taken without a timer (a small body is usually whole in the
    buffer by the time it is read): the timer is paid only for a real wait.
    """
    while True:
        chunk = stream.read_nowait()
        if not chunk:
            if stream.at_eof():
                return
            async with asyncio.timeout(idle):
                chunk = await stream.readany()
            if not chunk:
                return
        yield chunk


async def _pieces(content: aiohttp.StreamReader, idle: float) -> AsyncIterator[bytes]:
    """A request body's pieces as they arrive, each as it was received (`readchunk`: never joined, unlike
    `readany`: a copy of every byte less); a wait that moves no byte for `idle` seconds raises TimeoutError,
    a body that broke off (a parse error, the connection lost: the reader's exception) `_BodyBroken`."""
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk, end_of_chunk = await content.readchunk()
        except Exception as exc:
            if content.exception() is None:
                raise
            raise _BodyBroken from exc
        if chunk:
            yield chunk
        elif not end_of_chunk:  # (b"", False): the body's end; (b"", True): the end of an HTTP chunk
            return


async def _relay(source: Any, sink: Any) -> None:
    """Messages from one WebSocket to the other until `source` closes; its close code is passed on."""
    async for message in source:
        if message.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        else:
            break
    code = source.close_code
    await sink.close(code=1000 if code is None or code in _RESERVED_CLOSE else code)


async def serve(settings: ValidatorSettings, upstream: str, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM, then finish in-flight requests (up to SHUTDOWN_GRACE) and flush usage."""
    proxy = Proxy(Validator(settings), upstream)
    await proxy.start()
    server = _Server(
        proxy.handle,
        handler_cancellation=True,
        access_log=None,
        max_field_size=settings.max_token_bytes + 64,
        keepalive_timeout=75,
    )
    runners = [web.ServerRunner(server, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)]
    if settings.proxy_metrics_address:
        runners.append(web.ServerRunner(web.Server(proxy.metrics, access_log=None), handle_signals=False))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await runners[0].setup()
        await web.TCPSite(runners[0], host, port, backlog=1024).start()
        log.info("proxy on http://%s:%d → %s; issuers %s", host, port, upstream, ", ".join(settings.issuers))
        if settings.proxy_metrics_address:
            await runners[1].setup()
            await web.TCPSite(runners[1], *listen_address(settings.proxy_metrics_address)).start()
            log.info("metrics on http://%s/metrics", settings.proxy_metrics_address)
        freeze_startup_heap()
        await stopping.wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        await proxy.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m token_service.validator.proxy", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default="INFO")
    args = parser.parse_args(argv)
    settings = ValidatorSettings.load()
    logging.config.dictConfig(log_config(args.log_level))
    import uvloop

    uvloop.run(serve(settings, args.upstream, args.host, args.port))


if __name__ == "__main__":
    main()
