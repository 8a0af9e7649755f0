"""Real processes for end-to-end tests: issuer, validator, demo model API and a gateway
(nginx, Envoy, Caddy or Traefik), plus a TCP proxy that can cut a connection.

`start(spec)` runs one `ServiceSpec` (a command and a readiness URL) as a subprocess
in its own session on 127.0.0.1, waits (bounded) until the URL answers 2xx and returns
a `Running` handle; `Running.stop()` ends that process group only. `Stack` composes the
demo deployment, local issuer → validator ← gateway → demo model API, for any suite
(e.g. the CKAN e2e test) to reuse:

    with Stack(db_url, tmp_path, gateway="nginx") as stack:
        token, token_id = stack.create_token(["model:sentiment:predict"])
        requests.post(stack.gateway_url + "/v1/models/sentiment/predict",
                      headers={"Authorization": f"Bearer {token}"}, json={"text": "good"})

`db_url` must be a migrated database (the `db_url` fixture); the stack adds a signing key.
Gateway configs come from devstack/gateways/, the same files the demo runs.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from devstack.services import (
    GATEWAY_SPECS,
    GATEWAYS,
    ROOT,
    Running,
    ServiceSpec,
    envoy_spec,
    free_port,
    issuer_spec,
    mltokens,
    model_api_spec,
    nginx_spec,
    render,
    start,
    validator_spec,
    wait_ready,
)
from tests.support.mesh import MESH_SPECS
from token_service.config import Settings
from token_service.issuers import Owner
from token_service.issuers.local import LocalIssuer
from token_service.lifecycle import Actor, Lifecycle, utcnow
from token_service.store import Store

BIN = Path(sys.executable).parent
__all__ = [
    "GATEWAYS",
    "Running",
    "ServiceSpec",
    "Stack",
    "TcpProxy",
    "envoy_spec",
    "free_port",
    "issuer_spec",
    "model_api_spec",
    "nginx_spec",
    "render",
    "start",
    "validator_spec",
    "wait_ready",
]
PASSPHRASE = "stack-passphrase"


def write_config(path: Path, db_url: str, issuer_url: str, policy: Path, **validator: Any) -> Path:
    """A TOML file with the core ([mltokens]) and validator ([validator]) settings."""

    def toml(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(toml(v) for v in value) + "]"
        return str(value) if isinstance(value, int) else f'"{value}"'

    lines = [
        "[mltokens]",
        f"database_url = {toml(db_url)}",
        f"issuer_url = {toml(issuer_url)}",
        f"key_passphrase = {toml(PASSPHRASE)}",
        "",
        "[validator]",
        f"policy_file = {toml(str(policy))}",
    ]
    lines += [f"{k} = {toml(v)}" for k, v in validator.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class TcpProxy:
    """A loopback TCP proxy a test can cut (drop every connection, refuse new ones) and restore.

    Stands for a network partition between a validator and PostgreSQL without touching
    the shared server: point the validator's database URL at `proxy.port`. Setting
    `delay` holds every upstream answer that many seconds (a slow server).
    """

    delay = 0.0

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.enabled = True
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.enabled:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b, upstream_answer in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(a, b, upstream_answer), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream_answer: bool) -> None:
        """Copy `src` to `dst` until either closes; `upstream_answer`: `src` is the target's side
        (known when accepting: asking the socket here fails once a peer has gone)."""
        try:
            with contextlib.suppress(OSError):  # either side closed: the pump ends
                while data := src.recv(65536):
                    if upstream_answer and self.delay:
                        time.sleep(self.delay)
                    dst.sendall(data)
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every proxied connection and refuse new ones until restore()."""
        self.enabled = False
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def restore(self) -> None:
        self.enabled = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()


def wsgi_echo_spec(port: int) -> ServiceSpec:
    """tests/support/wsgi_echo.py: a WSGI upstream that shows its HTTP_* environ."""
    return ServiceSpec(
        "model_api",
        [sys.executable, "-m", "tests.support.wsgi_echo", "--port", str(port)],
        f"http://127.0.0.1:{port}/healthz",
    )


class Stack:
    """issuer + validator + upstream (the demo model API, or `upstream="wsgi"` for the WSGI echo)
    + one gateway, started in order, stopped in reverse."""

    def __init__(
        self,
        db_url: str,
        workdir: Path,
        gateway: str = "nginx",
        validator_workers: int = 1,
        policy: Path = ROOT / "devstack" / "policy.yaml",
        upstream: str = "model_api",
        **validator_settings: Any,
    ) -> None:
        self.db_url = db_url
        self.upstream = upstream
        self.workdir = workdir
        self.gateway = gateway
        self.ports = {name: free_port() for name in ("issuer", "validator", "model_api", "gateway")}
        self.issuer_url = f"http://127.0.0.1:{self.ports['issuer']}"
        self.validator_url = f"http://127.0.0.1:{self.ports['validator']}"
        self.model_api_url = f"http://127.0.0.1:{self.ports['model_api']}"
        self.gateway_url = f"http://127.0.0.1:{self.ports['gateway']}"
        self.config = write_config(
            workdir / "mltokens.toml",
            db_url,
            self.issuer_url,
            policy,
            **{"heartbeat_interval": "200ms", "max_staleness": "3s", **validator_settings},
        )
        self.validator_workers = validator_workers
        self.running: list[Running] = []

    def specs(self) -> Sequence[ServiceSpec]:
        p = self.ports
        gateway = {**GATEWAY_SPECS, **MESH_SPECS}[self.gateway]
        return (
            issuer_spec(self.config, p["issuer"]),
            validator_spec(self.config, p["validator"], self.validator_workers),
            model_api_spec(p["model_api"]) if self.upstream == "model_api" else wsgi_echo_spec(p["model_api"]),
            gateway(self.workdir, p["gateway"], p["validator"], p["model_api"]),
        )

    def __enter__(self) -> Stack:
        subprocess.run(mltokens(self.config, "keys", "rotate"), check=True, capture_output=True, timeout=60)
        try:
            for spec in self.specs():
                self.running.append(start(spec, self.workdir / "logs"))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for running in reversed(self.running):
            running.stop()
        self.running.clear()

    def service(self, name: str) -> Running:
        return next(r for r in self.running if r.spec.name == name)

    def lifecycle(self) -> Lifecycle:
        """A lifecycle on the stack's database and issuer keys; dispose of its `store` after use."""
        settings = Settings.load(self.config, env={})
        store = Store(settings.database_url)
        return Lifecycle(settings, store, LocalIssuer(settings, store, utcnow))

    def create_token(
        self, roles: Sequence[str], owner: tuple[str, str] = ("u-alice", "alice"), name: str | None = None
    ) -> tuple[str, str]:
        """(token string, token id) of a fresh token, created through the real lifecycle."""
        lc = self.lifecycle()
        try:
            issued = lc.create(Owner(*owner), name or f"t-{time.monotonic_ns()}", list(roles))
        finally:
            lc.store.dispose()
        return issued.secret, issued.info.id

    def revoke(self, token_id: str) -> None:
        """Revoke a token through the real lifecycle, as an operator."""
        lc = self.lifecycle()
        try:
            lc.revoke(token_id, Actor.operator())
        finally:
            lc.store.dispose()

    def call(
        self, path: str, token: str | None = None, extra: dict[str, str] | None = None, method: str = "POST"
    ) -> requests.Response:
        """A model API request through the gateway, with a bearer token when given."""
        headers = dict(extra or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(
            method, self.gateway_url + path, headers=headers, json={"text": "a good day"}, timeout=5
        )


def children(pid: int) -> list[int]:
    """The worker processes of a server (not multiprocessing's resource tracker)."""
    pids = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    return [p for p in pids if _is_worker(p)]


def _is_worker(pid: int) -> bool:
    try:
        return b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:  # exited meanwhile
        return False
