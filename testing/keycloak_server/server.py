"""Run the Keycloak stand-in on a loopback port, in a background thread."""

from __future__ import annotations

import threading
from types import TracebackType

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .app import KeycloakApp
from .store import Store


class _QuietHandler(WSGIRequestHandler):
    """Request handler that does not log every request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


class KeycloakTestServer:
    """A Keycloak-compatible server on ``127.0.0.1``; ``port=0`` picks a free port."""

    def __init__(
        self,
        admin_user: str = "admin",
        admin_password: str = "admin",
        host: str = "127.0.0.1",
        port: int = 0,
        log_requests: bool = False,
    ) -> None:
        self.admin_user = admin_user
        self.admin_password = admin_password
        self.store = Store(admin_user, admin_password)
        handler = WSGIRequestHandler if log_requests else _QuietHandler
        self._server: BaseWSGIServer = make_server(
            host, port, KeycloakApp(self.store), threaded=True, request_handler=handler
        )
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, as python-keycloak's ``server_url`` expects it."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> KeycloakTestServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="keycloak-test-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread (the CLI)."""
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> KeycloakTestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
