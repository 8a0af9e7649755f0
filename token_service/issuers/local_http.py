"""Publishes the local issuer's discovery document and JWKS over HTTP.

Traffic here is a JWKS fetch per validator per refresh interval, so the standard
library's threading server is enough and keeps the core free of web frameworks.
The JWKS comes from PostgreSQL through `JwksCache`: read at most once per `ttl`, and
while PostgreSQL fails or hangs the last good copy is served, so validators keep
fetching keys through a database outage.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .local import DISCOVERY_PATH, JWKS_PATH, LocalIssuer

log = logging.getLogger(__name__)


@dataclass
class _Read:
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    value: dict[str, Any] | None = None
    error: BaseException | None = None


class JwksCache:
    """The issuer's JWKS, read from the store at most once per `ttl` seconds (at once after a
    rotation made through this issuer). One read at a time runs in the background; a request
    waits for it at most `wait` seconds once a copy exists (`first_wait` before), then gets the
    last good copy. Serving that copy however old is what the validators do with their own
    copy (last good keys) when the issuer is down: keys can only be added through PostgreSQL,
    and a token signed by a key missing here is refused, never accepted."""

    def __init__(self, issuer: LocalIssuer, ttl: float = 1.0, wait: float = 0.5, first_wait: float = 10.0) -> None:
        self.issuer, self.ttl, self.wait, self.first_wait = issuer, ttl, wait, first_wait
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._read_at = -math.inf
        self._generation = -1
        self._reading: _Read | None = None

    def get(self) -> dict[str, Any]:
        with self._lock:
            fresh = time.monotonic() - self._read_at < self.ttl and self._generation == self.issuer.keys.generation
            if self._value is not None and fresh:
                return self._value
            read = self._reading
            if read is None:
                read = self._reading = _Read(time.monotonic())
                threading.Thread(target=self._read, args=(read,), name="jwks-read", daemon=True).start()
            budget = self.wait if self._value is not None else self.first_wait
        read.done.wait(max(0.0, read.started + budget - time.monotonic()))
        with self._lock:
            if read.value is not None:
                return read.value
            if self._value is not None:
                return self._value
        raise read.error or TimeoutError(f"the token store did not answer within {budget:g} s")

    def _read(self, read: _Read) -> None:
        generation = self.issuer.keys.generation
        try:
            read.value = self.issuer.jwks()
        except Exception as exc:  # served stale; the cause (StoreUnavailable chains the driver's) in the log
            read.error = exc
            cause = exc.__cause__ or exc
            log.warning(
                "JWKS not read from the token store (%s: %s); serving the last good copy",
                type(cause).__name__,
                str(cause).strip() or "no detail",
            )
        else:
            with self._lock:
                self._value, self._read_at, self._generation = read.value, read.started, generation
        finally:
            with self._lock:
                self._reading = None
            read.done.set()


def make_server(issuer: LocalIssuer, host: str, port: int) -> ThreadingHTTPServer:
    prefix = urlsplit(issuer.issuer_url).path.rstrip("/")
    routes = {prefix + DISCOVERY_PATH: issuer.discovery, prefix + JWKS_PATH: JwksCache(issuer).get}

    class Handler(BaseHTTPRequestHandler):
        server_version = "mltokens-issuer"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            route = routes.get(urlsplit(self.path).path)
            if route is None:
                self._send(404, {"error": "not_found"})
                return
            try:
                body = route()
            except Exception:
                log.exception("issuer endpoint %s failed", self.path)
                self._send(503, {"error": "temporarily_unavailable"})
                return
            self._send(200, body, cache="public, max-age=60")

        def _send(self, status: int, body: object, cache: str = "no-store") -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", cache)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return ThreadingHTTPServer((host, port), Handler)
