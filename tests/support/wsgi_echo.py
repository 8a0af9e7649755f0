"""A WSGI upstream that answers every request with the `HTTP_*` keys of its environ, as JSON.

Served by the standard library's wsgiref, which builds the environ as CGI does: a header's
name is upper-cased and `-` turned into `_`, and headers that end up with the same key are
joined with a comma, so `X_Auth_Roles` and `X-Auth-Roles` both land in `HTTP_X_AUTH_ROLES`.
Other servers and frameworks (PHP, CGI, Apache) also turn `.` and the other punctuation
allowed in header names into `_`; `cgi_key` computes that wider mapping so a test can see
which environ keys such a backend would read as an identity header.

    python -m tests.support.wsgi_echo --port 8903
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


def cgi_key(environ_key: str) -> str:
    """The variable a CGI-style backend derives from a header: every non-alphanumeric becomes `_`."""
    return re.sub(r"[^A-Z0-9]", "_", environ_key.upper())


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = json.dumps({k: v for k, v in environ.items() if k.startswith("HTTP_")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        """Requests are not logged: the tests read only the echoed headers."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with make_server("127.0.0.1", args.port, app, server_class=_Server, handler_class=_Quiet) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
