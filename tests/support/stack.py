"""Real processes for end-to-end tests: issuer, validator, demo model API, nginx, Envoy.

`start(spec)` runs one `ServiceSpec` (a command and a readiness URL) as a subprocess
in its own session on 127.0.0.1, waits (bounded) until the URL answers 2xx and returns
a `Running` handle; `Running.stop()` ends that process group only. `Stack` composes the
demo deployment, local issuer → validator ← gateway → demo model API, for any suite
(e.g. the CKAN e2e test) to reuse:

    with Stack(db_url, tmp_path, gateway="nginx") as stack:
        token = stack.create_token(["model:sentiment:predict"])
        requests.post(stack.gateway_url + "/v1/models/sentiment/predict",
                      headers={"Authorization": f"Bearer {token}"}, json={"text": "good"})

`db_url` must be a migrated database (the `db_url` fixture); the stack adds a signing key.
Gateway configs come from demo/gateways/, the same files the demo runs.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GATEWAYS = ROOT / "demo" / "gateways"
BIN = Path(sys.executable).parent
PASSPHRASE = "stack-passphrase"


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServiceSpec:
    """One service: how to start it and how to know it is ready."""

    name: str
    argv: list[str]
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT


@dataclass
class Running:
    spec: ServiceSpec
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM to this service's process group, SIGKILL after `timeout`."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def wait_ready(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if 200 <= response.status < 300:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode} before {url} was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready within {timeout}s")
        time.sleep(0.05)


def start(spec: ServiceSpec, log_dir: Path, timeout: float = 20) -> Running:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(spec.argv, stdout=log, stderr=subprocess.STDOUT, cwd=spec.cwd,
                                   env={**os.environ, **spec.env}, start_new_session=True)
    running = Running(spec, process, log_path)
    try:
        wait_ready(spec.ready_url, timeout, process)
    except (RuntimeError, TimeoutError) as exc:
        running.stop()
        raise RuntimeError(f"{spec.name}: {exc}\n--- {log_path} ---\n{running.log_tail()}") from None
    return running


def render(template: str, out: Path, **values: Any) -> Path:
    """Fill `{{name}}` placeholders of a demo/gateways/ template into `out`."""
    text = (GATEWAYS / template).read_text()
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", str(value))
    if "{{" in text:
        raise ValueError(f"{template}: unfilled placeholder near {text[text.index('{{'):][:40]!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def write_config(path: Path, db_url: str, issuer_url: str, policy: Path, **validator: Any) -> Path:
    """A TOML file with the core ([mltokens]) and validator ([validator]) settings."""
    def toml(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(toml(v) for v in value) + "]"
        return str(value) if isinstance(value, int) else f'"{value}"'

    lines = ["[mltokens]", f"database_url = {toml(db_url)}", f"issuer_url = {toml(issuer_url)}",
             f"key_passphrase = {toml(PASSPHRASE)}", "", "[validator]", f"policy_file = {toml(str(policy))}"]
    lines += [f"{k} = {toml(v)}" for k, v in validator.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def mltokens(config: Path, *args: str) -> list[str]:
    return [str(BIN / "mltokens"), "--config", str(config), *args]


def issuer_spec(config: Path, port: int) -> ServiceSpec:
    return ServiceSpec("issuer", mltokens(config, "issuer", "serve", "--host", "127.0.0.1", "--port", str(port)),
                       f"http://127.0.0.1:{port}/.well-known/openid-configuration")


def validator_spec(config: Path, port: int, workers: int = 1, name: str = "validator",
                   server: str = "granian") -> ServiceSpec:
    return ServiceSpec(name, mltokens(config, "serve", "--port", str(port), "--workers", str(workers),
                                      "--server", server), f"http://127.0.0.1:{port}/readyz")


def model_api_spec(port: int) -> ServiceSpec:
    return ServiceSpec("model_api", [sys.executable, "-m", "demo.model_api", "--port", str(port)],
                       f"http://127.0.0.1:{port}/healthz")


def nginx_spec(workdir: Path, port: int, validator_port: int, upstream_port: int) -> ServiceSpec:
    prefix = workdir / "nginx"
    conf = render("nginx.conf", prefix / "nginx.conf", prefix=prefix, port=port,
                  validator=f"127.0.0.1:{validator_port}", upstream=f"127.0.0.1:{upstream_port}")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return ServiceSpec("nginx", [nginx, "-p", str(prefix), "-c", str(conf), "-e", "stderr"],
                       f"http://127.0.0.1:{port}/healthz")


def envoy_spec(workdir: Path, port: int, validator_port: int, upstream_port: int) -> ServiceSpec:
    admin = free_port()
    conf = render("envoy.yaml", workdir / "envoy" / "envoy.yaml", admin_port=admin, port=port,
                  validator=f"127.0.0.1:{validator_port}", validator_port=validator_port,
                  upstream_port=upstream_port)
    return ServiceSpec("envoy", [str(BIN / "envoy"), "-c", str(conf), "--base-id", str(admin), "-l", "warning",
                                 "--concurrency", "1"], f"http://127.0.0.1:{admin}/ready")


class TcpProxy:
    """A loopback TCP proxy a test can cut (drop every connection, refuse new ones) and restore.

    Stands for a network partition between a validator and PostgreSQL without touching
    the shared server: point the validator's database URL at `proxy.port`.
    """

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
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Drop every proxied connection and refuse new ones until restore()."""
        self.enabled = False
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def restore(self) -> None:
        self.enabled = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()


class Stack:
    """issuer + validator + demo model API + one gateway, started in order, stopped in reverse."""

    def __init__(self, db_url: str, workdir: Path, gateway: str = "nginx", validator_workers: int = 1,
                 policy: Path = ROOT / "demo" / "policy.yaml", **validator_settings: Any) -> None:
        self.db_url = db_url
        self.workdir = workdir
        self.gateway = gateway
        self.ports = {name: free_port() for name in ("issuer", "validator", "model_api", "gateway")}
        self.issuer_url = f"http://127.0.0.1:{self.ports['issuer']}"
        self.validator_url = f"http://127.0.0.1:{self.ports['validator']}"
        self.model_api_url = f"http://127.0.0.1:{self.ports['model_api']}"
        self.gateway_url = f"http://127.0.0.1:{self.ports['gateway']}"
        self.config = write_config(workdir / "mltokens.toml", db_url, self.issuer_url, policy,
                                   **{"heartbeat_interval": "200ms", "max_staleness": "3s", **validator_settings})
        self.validator_workers = validator_workers
        self.running: list[Running] = []

    def specs(self) -> Sequence[ServiceSpec]:
        p = self.ports
        gateway = {"nginx": nginx_spec, "envoy": envoy_spec}[self.gateway]
        return (issuer_spec(self.config, p["issuer"]),
                validator_spec(self.config, p["validator"], self.validator_workers),
                model_api_spec(p["model_api"]),
                gateway(self.workdir, p["gateway"], p["validator"], p["model_api"]))

    def __enter__(self) -> "Stack":
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

    def lifecycle(self) -> Any:
        from token_service.config import Settings
        from token_service.issuers.local import LocalIssuer
        from token_service.lifecycle import Lifecycle
        from token_service.store import Store

        settings = Settings.load(self.config, env={})
        store = Store(settings.database_url)
        return Lifecycle(settings, store, LocalIssuer(settings, store, _utcnow))

    def create_token(self, roles: Sequence[str], owner: tuple[str, str] = ("u-alice", "alice"),
                     name: str | None = None) -> tuple[str, str]:
        """(token string, token id) of a fresh token, created through the real lifecycle."""
        from token_service.issuers import Owner

        lc = self.lifecycle()
        try:
            issued = lc.create(Owner(*owner), name or f"t-{time.monotonic_ns()}", list(roles))
        finally:
            lc.store.dispose()
        return issued.secret, issued.info.id


def _utcnow() -> Any:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)
