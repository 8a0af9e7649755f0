"""A lean keep-alive HTTP/1.1 client for `mltokens proxy`: the request up, the answer streamed back.

aiohttp's `ClientSession.request` cost the proxy more than half of its CPU time a small
request (docs/benchmarks.md, "Proxy mode"); this client sends a request's head (and its
body, when that is whole) with one write and parses the answer with httptools (llhttp,
the parser of the validator's lean server), with no per-request objects beyond the
answer's own. `Pool` holds the keep-alive connections (at most `size` open, 0: no limit).
A body still on its way goes up by `Exchange.write`/`drain`/`end`, at the pace the
upstream's socket takes it. WebSockets stay with aiohttp's client.

An answer's body is read with `Exchange.read`: what has arrived, joined, or a wait for more.
Past `HIGH_WATER` bytes not yet read the connection stops reading its socket until they
are (backpressure: a slow client slows the upstream, memory stays bounded). A connection
goes back to the pool only when its answer was read to its end and both sides keep it
alive; any other end closes it.

An upstream that answers an upload early and closes with the body unread resets the
connection (RST): the answer waits in the kernel's receive queue, but a write of the
upload that meets the reset first makes the event loop close the transport without
reading it (uvloop and asyncio alike). Each connection therefore keeps a duplicate of
its socket, and a connection lost with an error before its answer ended reads what the
kernel still holds from it (`_Connection.connection_lost`). That is why TLS (`https://`)
runs inside the connection, on `ssl.SSLObject` over memory buffers, rather than in the
event loop's TLS transport: records read from the duplicate decrypt like any others, so
an early answer is heard over TLS too.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httptools

HIGH_WATER = 1 << 17  # bytes of an answer's body buffered before the socket stops being read
WRITE_HIGH_WATER = 1 << 20  # bytes of a request body queued for the socket before `drain` waits (uvloop's
# default, 64 KiB, is less than one piece of an upload as aiohttp's server hands it on: a pause a piece)
IDLE_REUSE = 2.0  # seconds: an idle connection older than this is closed, not reused (servers' keep-alive
# timeouts are as short as 2 s, gunicorn's, and a request on a connection the upstream just closed fails)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})  # RFC 9110 9.2.2: safe to retry


class UpstreamError(Exception):
    """The upstream closed the connection or sent what is not HTTP/1.1, before or during its answer."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the upstream; `exchange` is its request in flight, if any.
    `tls`: https's context and the host its certificate must name (None: plain TCP)."""

    def __init__(self, tls: tuple[ssl.SSLContext, str] | None = None) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None  # uvloop's transports are no asyncio.Transport
        self.exchange: Exchange | None = None
        self.lost = False
        self.idle_since = 0.0
        self.writable: asyncio.Future[None] | None = None  # set while the socket's write buffer is full
        self._socket: socket.socket | None = None  # a duplicate of the socket: what a reset left unread
        self._tls: ssl.SSLObject | None = None
        self._records: ssl.MemoryBIO | None = None  # TLS records received
        self._sent: ssl.MemoryBIO | None = None  # TLS records to send
        self.handshake: asyncio.Future[None] | None = None  # TLS: done when the handshake is
        if tls is not None:
            self._records, self._sent = ssl.MemoryBIO(), ssl.MemoryBIO()
            self._tls = tls[0].wrap_bio(self._records, self._sent, server_hostname=tls[1])

    def pause_writing(self) -> None:
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._socket = socket.fromfd(sock.fileno(), sock.family, sock.type)  # a dup: outlives the transport's fd
            self._socket.setblocking(False)
        if self._tls is not None:
            self.handshake = asyncio.get_running_loop().create_future()
            self._shake()

    def send(self, *parts: bytes) -> None:
        """Write to the upstream (encrypted over TLS)."""
        if self._tls is None:
            self.transport.writelines(parts)
            return
        for part in parts:
            self._tls.write(part)
        self._send_records()

    def _send_records(self) -> None:
        assert self._sent is not None
        records = self._sent.read()
        if records and not self.lost:  # (after a reset: the records left are read, never answered)
            self.transport.write(records)

    def _shake(self) -> None:
        """Take the TLS handshake a step further; `handshake` ends it (verification failures included)."""
        assert self._tls is not None and self.handshake is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._send_records()
            return
        except ssl.SSLError as exc:  # the certificate or host name not verified, or no TLS
            self._send_records()  # the alert
            self.handshake.set_exception(exc)
            self.transport.close()
            return
        self._send_records()
        self.handshake.set_result(None)

    def _decrypt(self, records: bytes) -> bytes | None:
        """The plaintext of these TLS records, b"" if none is whole yet, None if they are not TLS."""
        assert self._tls is not None and self._records is not None and self.handshake is not None
        self._records.write(records)
        if not self.handshake.done():
            self._shake()
            if not self.handshake.done() or self.handshake.exception() is not None:
                return b""
        plain = []
        while True:
            try:
                data = self._tls.read(1 << 16)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):  # nothing whole yet, or its close_notify
                break
            except ssl.SSLError:
                return None
            if not data:
                break
            plain.append(data)
        self._send_records()  # replies to post-handshake messages
        return b"".join(plain)

    def data_received(self, data: bytes) -> None:
        if self._tls is not None:
            plain = self._decrypt(data)
            if plain is None:
                if self.exchange is not None:
                    self.exchange.keep_alive = False
                    self.exchange.fail(UpstreamError("not TLS"))
                self.transport.close()
                return
            if not plain:
                return
            data = plain
        exchange = self.exchange
        if exchange is None or exchange.ended:  # bytes nobody asked for: the connection is unusable
            if exchange is not None:
                exchange.keep_alive = False
            self.transport.close()
            return
        exchange.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # not HTTP, an upgrade, or a second answer after the first one's end
            exchange.keep_alive = False
            exchange.fail(UpstreamError("not HTTP/1.1"))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionError("closed during the TLS handshake"))
        if self._socket is not None:
            if exc is not None and self.exchange is not None and not self.exchange.ended:
                self._read_what_is_left()
            self._socket.close()
            self._socket = None
        self.resume_writing()
        if self.exchange is not None:
            self.exchange.closed(exc)

    def _read_what_is_left(self) -> None:
        """The bytes the kernel still holds after a reset (at most its receive buffer), to the parser: an
        early answer the transport, closed by a failed write, never read."""
        assert self._socket is not None
        while self.exchange is not None and not self.exchange.ended and self.exchange.error is None:
            try:
                data = self._socket.recv(1 << 16)
            except OSError:  # nothing more (BlockingIOError), or the reset itself
                return
            if not data:
                return
            self.data_received(data)

    # httptools' callbacks, passed on to the exchange in flight
    def on_message_begin(self) -> None:
        if self.exchange is not None:
            if self.exchange.ended:  # a second answer in the same read (a desynchronised upstream): it must
                raise UpstreamError("an answer nobody asked for")  # not overwrite the first one's head
            self.exchange.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.exchange is not None:
            self.exchange.headers.append((name, value))

    def on_status(self, reason: bytes) -> None:
        if self.exchange is not None:
            try:  # as the proxy reads header values (`proxy.response_headers`)
                self.exchange.reason = reason.decode()
            except UnicodeDecodeError:
                self.exchange.reason = reason.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.exchange is not None:  # an HTTP/1.0 answer ends its connection, as nginx treats one
            keep_alive = self.parser.should_keep_alive() and self.parser.get_http_version() == "1.1"
            self.exchange.head(self.parser.get_status_code(), keep_alive)

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.body(body)

    def on_message_complete(self) -> None:
        if self.exchange is not None:
            self.exchange.complete()


class Exchange:
    """One request and its answer on one connection: the status and headers, then the body by `read`."""

    def __init__(self, connection: _Connection, head_only: bool, reused: bool, chunked: bool) -> None:
        self.connection, self.reused, self.chunked = connection, reused, chunked
        self.head_only = head_only  # a HEAD request: the answer has no body whatever its headers say
        self.headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.reason: str | None = None
        self.keep_alive = False
        self.until_close = False  # a body with neither a length nor chunks: it ends when the connection does
        self.ended = False
        self.received = False  # a byte of the answer came (then the request reached the upstream: no retry)
        self._interim = False
        self.error: Exception | None = None
        self._buffer: list[bytes] = []
        self._size = 0
        self._paused = False
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[None] = loop.create_future()  # the status line and headers are in
        self._waiter: asyncio.Future[None] | None = None

    # called by the connection
    def head(self, status: int, keep_alive: bool) -> None:
        if 100 <= status < 200:  # an interim answer (103 Early Hints, …): not passed on, the final one follows
            self._interim = True
            return
        self.status, self.keep_alive = status, keep_alive
        if not self.head_only:
            names = {name.lower() for name, _ in self.headers}
            self.until_close = b"content-length" not in names and b"transfer-encoding" not in names
        if not self.started.done():
            self.started.set_result(None)
        if self.head_only:  # llhttp would wait for a body of Content-Length bytes: there is none
            self.keep_alive = False
            self.complete()

    def body(self, data: bytes) -> None:
        if self.ended:
            return
        self._buffer.append(data)
        self._size += len(data)
        self._wake()
        if self._size > HIGH_WATER and not self._paused and not self.connection.lost:
            self._paused = True
            self.connection.transport.pause_reading()

    def complete(self) -> None:
        if self._interim:  # the end of an interim answer
            self._interim = False
            return
        if self.ended:
            return
        self.ended = True
        self._wake()

    def fail(self, error: Exception) -> None:
        if self.ended:
            return
        self.error = error
        if not self.started.done():
            self.started.set_exception(error)
        self._wake()

    def closed(self, exc: Exception | None) -> None:
        self.keep_alive = False
        if exc is None and self.started.done() and self.until_close:  # a body delimited by the connection's
            self.complete()  # end (a reset is no end: the body broke off)
        else:
            self.fail(UpstreamError("connection closed"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # a request body sent after its head (`Pool.exchange` with `chunked` or a Content-Length and no body)
    def write(self, data: bytes) -> None:
        """One piece of the request body (framed as a chunk when the request is chunked)."""
        if not self.connection.lost:
            if self.chunked:
                self.connection.send(b"%x\r\n" % len(data), data, b"\r\n")
            else:
                self.connection.send(data)

    async def drain(self, idle: float) -> None:
        """Wait while the upstream's socket takes no more (backpressure), at most `idle` seconds (TimeoutError)."""
        writable = self.connection.writable
        if writable is None:
            return
        async with asyncio.timeout(idle):
            await writable

    def end(self) -> None:
        """The request body is whole."""
        if self.chunked and not self.connection.lost:
            self.connection.send(b"0\r\n\r\n")

    # called by the proxy
    def read_nowait(self) -> bytes:
        """What has arrived and not been read yet (b"" if nothing)."""
        if not self._buffer:
            return b""
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        if self._paused and not self.connection.lost:
            self._paused = False
            self.connection.transport.resume_reading()
        return data

    def is_eof(self) -> bool:
        """The whole body has arrived (some may still be unread)."""
        return self.ended and self.error is None

    def at_eof(self) -> bool:
        """The whole body has arrived and been read."""
        return self.is_eof() and not self._buffer

    async def readany(self) -> bytes:
        """The next piece of the body, as much as has arrived; b"" at its end. UpstreamError if it broke off."""
        while True:
            data = self.read_nowait()
            if data:
                return data
            if self.error is not None:
                raise self.error
            if self.ended:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    @property
    def reusable(self) -> bool:
        """The answer ended cleanly and was read to its end, and both sides keep the connection alive."""
        return self.at_eof() and self.keep_alive

    @property
    def stale(self) -> bool:
        """A pooled connection the upstream closed with not a byte of an answer: one a retry may replace."""
        return self.reused and not self.received and self.error is not None


class Pool:
    """Keep-alive connections to one upstream, at most `size` open (0: no limit); `tls`: https's context."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, size: int) -> None:
        self.host, self.port = host, port
        self.tls = (tls, host) if tls is not None else None
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(size) if size else None

    async def exchange(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        connect_timeout: float,
        chunked: bool = False,
    ) -> Exchange:
        """Send the request's head and `body`; its answer is awaited on the exchange's `started`, and `finish`
        must follow. A body still to come is sent by `Exchange.write`/`drain`/`end` (`chunked`: with no
        Content-Length, in chunks). OSError or TimeoutError (connecting), UpstreamError (a header value it
        cannot send)."""
        lines = [f"{method} {target} HTTP/1.1\r\n"]
        for name, value in headers:
            if "\r" in value or "\n" in value:
                raise UpstreamError("a header value with a line break")
            lines.append(f"{name}: {value}\r\n")
        if chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        lines.append("\r\n")
        request = "".join(lines).encode("latin-1") + body
        if self._slots is not None:
            await self._slots.acquire()
        try:
            connection, reused = await self._connection(connect_timeout)
        except BaseException:
            self._release_slot()
            raise
        exchange = Exchange(connection, method == "HEAD", reused, chunked)
        connection.exchange = exchange
        connection.send(request)
        return exchange

    async def _connection(self, connect_timeout: float) -> tuple[_Connection, bool]:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if not connection.transport.is_closing() and now - connection.idle_since < IDLE_REUSE:
                return connection, True
            connection.transport.close()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(connect_timeout):
            _, connection = await loop.create_connection(lambda: _Connection(self.tls), self.host, self.port)
            try:
                if connection.handshake is not None:
                    await connection.handshake
            except BaseException:
                connection.transport.close()
                raise
        return connection, False

    def finish(self, exchange: Exchange) -> None:
        """The exchange is over: its connection back to the pool if its answer ended cleanly, else closed."""
        connection = exchange.connection
        connection.exchange = None
        if exchange.reusable and not connection.transport.is_closing():
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.append(connection)
        else:
            connection.transport.close()
        self._release_slot()

    def _release_slot(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def close(self) -> None:
        for connection in self._idle:
            connection.transport.close()
        self._idle.clear()
