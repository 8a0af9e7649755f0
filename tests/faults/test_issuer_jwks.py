"""The local issuer's JWKS endpoint while PostgreSQL hangs or refuses: validators keep getting
the last good keys (its store reached through a TcpProxy the test stalls or cuts)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from tests.faults.harness import via
from tests.support.stack import TcpProxy, free_port
from token_service.config import Settings
from token_service.issuers.local import LocalIssuer
from token_service.issuers.local_http import make_server
from token_service.lifecycle import utcnow
from token_service.store import Store


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[str, LocalIssuer, TcpProxy]]:
    """(JWKS URL, the issuer, the proxy between the issuer and PostgreSQL)."""
    port = urlsplit(settings.database_url).port
    proxy = TcpProxy(port)
    store = Store(via(settings.database_url, proxy, port))
    issuer = LocalIssuer(settings, store, utcnow)
    issuer.keys.rotate(utcnow())
    http_port = free_port()
    server = make_server(issuer, "127.0.0.1", http_port)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{http_port}/local/jwks", issuer, proxy
    finally:
        server.shutdown()
        server.server_close()
        proxy.close()  # ends a read still held by the proxy
        store.dispose()


def kids(url: str) -> set[str]:
    r = requests.get(url, timeout=3)  # validators give up after jwks_timeout (5 s by default)
    assert r.status_code == 200
    return {k["kid"] for k in r.json()["keys"]}


@pytest.mark.parametrize("fault", ["hang", "refuse"])
def test_jwks_served_from_the_last_good_copy_while_postgres_hangs_or_refuses(
    served: tuple[str, LocalIssuer, TcpProxy], fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    url, issuer, proxy = served
    caplog.set_level(logging.WARNING, "token_service.issuers.local_http")
    first = kids(url)
    assert len(first) == 1
    time.sleep(1.1)  # older than the cache's ttl: the next request reads PostgreSQL again
    if fault == "hang":
        proxy.delay = 30
    else:
        proxy.cut()
    for _ in range(5):
        assert kids(url) == first
    if fault == "refuse":
        messages = [r.getMessage() for r in caplog.records]
        assert messages and all("(OperationalError: " in m for m in messages), messages
    proxy.delay = 0
    proxy.restore()


def test_a_rotation_is_published_at_once(served: tuple[str, LocalIssuer, TcpProxy]) -> None:
    url, issuer, _ = served
    first = kids(url)
    new = issuer.keys.rotate(utcnow()).kid
    assert kids(url) == first | {new}
