"""Run services as subprocesses: a spec (command + readiness URL), start, wait, stop.

Shared by the demo launcher (demo/run.py) and the end-to-end tests (tests/support/stack.py).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack import solr

ROOT = Path(__file__).resolve().parents[1]
GATEWAYS = ROOT / "devstack" / "gateways"
BIN = Path(sys.executable).parent


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of asking, never one this process was given
    before (two services started from the same call site would otherwise race for it)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket, from /proc/net/tcp{,6}."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    inode: str


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp* write an address as 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    return ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def listeners() -> list[Listener]:
    """Every listening TCP socket of this network namespace ([] where /proc/net is missing)."""
    found = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    hex_address, hex_port = fields[1].split(":")
                    found.append(Listener(_address(hex_address), int(hex_port, 16), fields[9]))
    return found


def socket_inodes(pid: int) -> set[str]:
    """The socket inodes among a process's open files (empty if they cannot be read)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def who_listens(port: int) -> str | None:
    """None when nothing listens on `port` (any address); else what does, as well as can be told:
    "pid 123 (nginx: master process …)", or "a process this user cannot inspect"."""
    inodes = {entry.inode for entry in listeners() if entry.port == port}
    if not inodes:
        with socket.socket() as s:  # no /proc/net (not Linux): ask the port itself
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return None
        return "a process that could not be identified"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and socket_inodes(int(proc.name)) & inodes:
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                return f"pid {proc.name} ({cmdline[:200]})"
    return "a process this user cannot inspect"


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
        with contextlib.suppress(OSError):  # URLError too: not listening yet
            with urllib.request.urlopen(url, timeout=1) as response:
                if 200 <= response.status < 300:
                    return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode} before {url} was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready within {timeout}s")
        time.sleep(0.05)


def start(spec: ServiceSpec, log_dir: Path, timeout: float = 20) -> Running:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            spec.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=spec.cwd,
            env={**os.environ, **spec.env},
            start_new_session=True,
        )
    running = Running(spec, process, log_path)
    try:
        wait_ready(spec.ready_url, timeout, process)
    except (RuntimeError, TimeoutError) as exc:
        running.stop()
        raise RuntimeError(f"{spec.name}: {exc}\n--- {log_path} ---\n{running.log_tail()}") from None
    except BaseException:  # Ctrl-C or SIGTERM while waiting: leave no process behind
        running.stop()
        raise
    return running


def render(template: str, out: Path, **values: Any) -> Path:
    """Fill `{{name}}` placeholders of a devstack/gateways/ template into `out`."""
    text = (GATEWAYS / template).read_text()
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", str(value))
    if "{{" in text:
        raise ValueError(f"{template}: unfilled placeholder near {text[text.index('{{') :][:40]!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def mltokens(config: Path, *args: str) -> list[str]:
    return [str(BIN / "mltokens"), "--config", str(config), *args]


def issuer_spec(config: Path, port: int) -> ServiceSpec:
    return ServiceSpec(
        "issuer",
        mltokens(config, "issuer", "serve", "--host", "127.0.0.1", "--port", str(port)),
        f"http://127.0.0.1:{port}/.well-known/openid-configuration",
    )


def validator_spec(
    config: Path, port: int, workers: int = 1, name: str = "validator", server: str = "lean"
) -> ServiceSpec:
    return ServiceSpec(
        name,
        mltokens(config, "serve", "--port", str(port), "--workers", str(workers), "--server", server),
        f"http://127.0.0.1:{port}/readyz",
    )


def model_api_spec(port: int) -> ServiceSpec:
    return ServiceSpec(
        "model_api",
        [sys.executable, "-m", "devstack.model_api", "--port", str(port)],
        f"http://127.0.0.1:{port}/healthz",
    )


def nginx_spec(workdir: Path, port: int, validator_port: int, upstream_port: int) -> ServiceSpec:
    prefix = workdir / "nginx"
    conf = render(
        "nginx.conf",
        prefix / "nginx.conf",
        prefix=prefix,
        port=port,
        validator=f"127.0.0.1:{validator_port}",
        upstream=f"127.0.0.1:{upstream_port}",
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return ServiceSpec(
        "nginx", [nginx, "-p", str(prefix), "-c", str(conf), "-e", "stderr"], f"http://127.0.0.1:{port}/healthz"
    )


def envoy_spec(workdir: Path, port: int, validator_port: int, upstream_port: int) -> ServiceSpec:
    admin = free_port()
    conf = render(
        "envoy.yaml",
        workdir / "envoy" / "envoy.yaml",
        admin_port=admin,
        port=port,
        validator=f"127.0.0.1:{validator_port}",
        validator_port=validator_port,
        upstream_port=upstream_port,
    )
    return ServiceSpec(
        "envoy",
        [str(BIN / "envoy"), "-c", str(conf), "--base-id", str(admin), "-l", "warning", "--concurrency", "1"],
        f"http://127.0.0.1:{admin}/ready",
    )


def caddy_spec(workdir: Path, port: int, validator_port: int, upstream_port: int) -> ServiceSpec:
    home = workdir / "caddy"
    conf = render(
        "Caddyfile",
        home / "Caddyfile",
        port=port,
        validator=f"127.0.0.1:{validator_port}",
        upstream=f"127.0.0.1:{upstream_port}",
    )
    caddy = shutil.which("caddy") or "/usr/bin/caddy"
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config")}
    return ServiceSpec(
        "caddy",
        [caddy, "run", "--config", str(conf), "--adapter", "caddyfile"],
        f"http://127.0.0.1:{port}/healthz",
        env=env,
    )


def traefik_spec(workdir: Path, port: int, validator_port: int, upstream_port: int) -> ServiceSpec:
    home = workdir / "traefik"
    dynamic = render(
        "traefik-dynamic.yml",
        home / "dynamic.yml",
        validator=f"127.0.0.1:{validator_port}",
        upstream=f"127.0.0.1:{upstream_port}",
    )
    static = render("traefik.yml", home / "traefik.yml", port=port, dynamic=dynamic)
    return ServiceSpec(
        "traefik",
        [str(BIN / "traefik"), f"--configFile={static}"],
        f"http://127.0.0.1:{port}/healthz",
        env={"HOME": str(home)},
    )


def proxy_spec(workdir: Path, port: int, validator_port: int, upstream_port: int) -> ServiceSpec:
    """`mltokens proxy` as the gateway: the validator inline, with the settings in workdir/mltokens.toml.

    `validator_port` is unused: the proxy decides in its own process."""
    upstream = f"http://127.0.0.1:{upstream_port}"
    return ServiceSpec(
        "proxy",
        mltokens(workdir / "mltokens.toml", "proxy", "--upstream", upstream, "--port", str(port)),
        f"http://127.0.0.1:{port}/_mltokens/readyz",
    )


def solr_spec(home: Path, port: int, log_dir: Path) -> ServiceSpec:
    """Solr 9 with the core `ckan` (devstack/solr); `home` is made or refreshed, its index kept."""
    return ServiceSpec("solr", solr.argv(solr.prepare_home(home), port, log_dir), solr.ready_url(port))


GATEWAY_SPECS = {
    "nginx": nginx_spec,
    "envoy": envoy_spec,
    "caddy": caddy_spec,
    "traefik": traefik_spec,
    "proxy": proxy_spec,
}
