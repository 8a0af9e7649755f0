"""The demo model API's streaming routes, as an LLM or training server has them (for `mltokens proxy`).

- `POST /v1/models/{model}/stream`: server-sent events, one every `interval` seconds
  (JSON body `{"events": n, "interval": s}`), each carrying its index and send time;
- `GET /v1/models/{model}/download?bytes=N`: N bytes in a chunked response;
- `POST|PUT /v1/models/{model}/upload`: a sink that reads a body of any size (fixed
  length or chunked) a MiB at a time and answers how many bytes arrived;
- `GET /v1/models/{model}/live`: a WebSocket (websockets' sans-I/O protocol) that first
  sends the caller's identity headers as JSON, then echoes every message;
- `GET /stream-stats`: streams started, finished and cut short by the client.

Each response carries the caller's identity (headers or first message) like the others.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs

from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

MAX_EVENTS = 10_000
MAX_DOWNLOAD = 16 << 30
PIECE = 1 << 20


class Stats:
    """What happened to the server-sent event streams (a test reads it to see a cancellation)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = {"started": 0, "finished": 0, "cut": 0}

    def add(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1


def write_chunk(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


def start_chunked(handler: BaseHTTPRequestHandler, content_type: str, caller: dict[str, str | None]) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("X-Caller", json.dumps(caller))
    handler.end_headers()


def sse(handler: BaseHTTPRequestHandler, body: dict[str, Any], caller: dict[str, str | None], stats: Stats) -> None:
    events = min(int(body.get("events", 5)), MAX_EVENTS)
    interval = min(max(float(body.get("interval", 0.1)), 0.0), 5.0)
    start_chunked(handler, "text/event-stream", caller)
    stats.add("started")
    try:
        for i in range(events):
            if i:
                time.sleep(interval)
            write_chunk(handler, b"data: %s\n\n" % json.dumps({"i": i, "t": time.time()}).encode())
        write_chunk(handler, b"")
    except OSError:  # the client went away (BrokenPipe, ConnectionReset)
        stats.add("cut")
        handler.close_connection = True
        return
    stats.add("finished")


def download(handler: BaseHTTPRequestHandler, query: str, caller: dict[str, str | None]) -> None:
    size = min(int(parse_qs(query).get("bytes", ["0"])[0]), MAX_DOWNLOAD)
    start_chunked(handler, "application/octet-stream", caller)
    block = b"x" * 65536
    try:
        while size > 0:
            write_chunk(handler, block[: min(size, len(block))])
            size -= len(block)
        write_chunk(handler, b"")
    except OSError:  # the client stopped reading and went away
        handler.close_connection = True


def _read_exactly(handler: BaseHTTPRequestHandler, size: int) -> int:
    """Read and drop `size` bytes of the request body, a MiB at a time; `size`."""
    remaining = size
    while remaining:
        piece = handler.rfile.read(min(remaining, PIECE))
        if not piece:
            raise ValueError("body cut short")
        remaining -= len(piece)
    return size


def upload(handler: BaseHTTPRequestHandler) -> int:
    """Read the request body to its end without keeping it; its size."""
    if handler.headers.get("Transfer-Encoding", "").lower() != "chunked":
        return _read_exactly(handler, int(handler.headers.get("Content-Length") or 0))
    received = 0
    while True:
        size = int(handler.rfile.readline().split(b";", 1)[0], 16)
        if size == 0:
            while handler.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                continue
            return received
        received += _read_exactly(handler, size)
        handler.rfile.readline()


def websocket(handler: BaseHTTPRequestHandler, caller: dict[str, str | None]) -> None:
    """Accept the upgrade, send the caller's identity, echo until either side closes."""
    protocol = ServerProtocol()
    # The protocol parses the handshake itself: give it the request head http.server has read.
    head = f"GET {handler.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in handler.headers.items())
    protocol.receive_data((head + "\r\n").encode("latin-1"))
    request = protocol.events_received()[0]
    assert isinstance(request, Request)
    protocol.send_response(protocol.accept(request))
    conn: socket.socket = handler.connection
    handler.close_connection = True

    def flush() -> bool:
        for data in protocol.data_to_send():
            if not data:
                return False
            conn.sendall(data)
        return True

    if not flush():
        return
    protocol.send_text(json.dumps(caller).encode())
    flush()
    while True:
        data = conn.recv(65536)
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        for frame in protocol.events_received():
            if frame.opcode is Opcode.TEXT:
                protocol.send_text(frame.data)
            elif frame.opcode is Opcode.BINARY:
                protocol.send_binary(frame.data)
        if not flush() or not data:
            return
