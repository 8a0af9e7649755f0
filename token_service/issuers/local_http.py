"""Publishes the local issuer's discovery document and JWKS over HTTP.

Traffic here is a JWKS fetch per validator per refresh interval, so the standard
library's threading server is enough and keeps the core free of web frameworks.
"""
from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from .local import DISCOVERY_PATH, JWKS_PATH, LocalIssuer

log = logging.getLogger(__name__)


def make_server(issuer: LocalIssuer, host: str, port: int) -> ThreadingHTTPServer:
    prefix = urlsplit(issuer.issuer_url).path.rstrip("/")
    routes = {prefix + DISCOVERY_PATH: issuer.discovery, prefix + JWKS_PATH: issuer.jwks}

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
