"""Proxy mode against nginx `auth_request` + the validator, in front of the same upstream.

    .venv/bin/python -m bench.proxy [--seconds 8] [--repeat 3] [--mib 1024]

The upstream is nginx on CPU 1 (beside wrk/curl): `return 200` for the model route and a
file of `--mib` MiB for the download route, so neither contender is held back by a
Python model server. The contenders run on CPU 0, each alone (the other frozen):

- `mltokens proxy --upstream <upstream>`: the validator inline, one process;
- nginx with devstack/gateways/nginx.conf (the demo's `auth_request` config) asking
  `mltokens serve` (lean, one worker) on the same core.

Prints requests/s and p50/p99 (wrk, 32 connections, 300 warm tokens, POST
/v1/models/sentiment/predict) side by side, the CPU time each contender's processes spent
a request meanwhile (the proxy; nginx's workers + the validator: on a shared, noisy host
this moves far less than requests/s), and bytes/s of one large download through each
(curl, to /dev/null). `bench.run` runs it after its own scenarios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from bench.run import NGINX_HEAD, ROLE, alone, database, mint, spec_port, wrk
from devstack.services import BIN, ROOT, Running, ServiceSpec, free_port, issuer_spec, nginx_spec, start
from tests.support.stack import write_config
from token_service.config import Settings
from token_service.issuers.local import LocalIssuer
from token_service.store import Store

MODEL_PATH = "/v1/models/sentiment/predict"
DOWNLOAD_PATH = "/v1/models/sentiment/download"
UPLOAD_PATH = "/v1/models/sentiment/upload"
UPSTREAM_CONF = (
    NGINX_HEAD
    + """    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{ return 200 "ok"; }}
        location = {download} {{ default_type application/octet-stream; alias {blob}; }}
        location = {upload} {{
            client_max_body_size 0;
            proxy_request_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://127.0.0.1:{sink};
        }}
        location / {{ return 200 '{{"ok":true}}'; }}
    }}
}}
"""
)


def pinned(spec: ServiceSpec, cpu: str) -> ServiceSpec:
    return replace(spec, argv=["taskset", "-c", cpu, *spec.argv])


def upstream(work: Path, mib: int, sink: int) -> ServiceSpec:
    port, prefix = free_port(), work / "upstream"
    prefix.mkdir(parents=True, exist_ok=True)
    for readable in (work, prefix):  # nginx's workers run as nobody
        readable.chmod(0o755)
    blob = prefix / "blob.bin"
    with blob.open("wb") as out:
        out.truncate(mib << 20)  # sparse: no disk I/O to speak of
    conf = prefix / "nginx.conf"
    conf.write_text(
        UPSTREAM_CONF.format(prefix=prefix, port=port, download=DOWNLOAD_PATH, blob=blob, upload=UPLOAD_PATH, sink=sink)
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return ServiceSpec(
        "upstream",
        ["taskset", "-c", "1", nginx, "-p", str(prefix), "-c", str(conf), "-e", "stderr"],
        f"http://127.0.0.1:{port}/healthz",
    )


def sink() -> ServiceSpec:
    """The upload route's end (bench/sink.py), behind the upstream nginx, on CPU 1."""
    port = free_port()
    argv = ["taskset", "-c", "1", sys.executable, "-m", "bench.sink", "--port", str(port)]
    return ServiceSpec("sink", argv, f"http://127.0.0.1:{port}/healthz")


def gateway(work: Path, validator_port: int, upstream_port: int) -> ServiceSpec:
    """nginx with the demo's auth_request config, made to stream uploads of any size as the proxy does:
    `client_max_body_size 0` (its 1 MiB default refuses them) and `proxy_request_buffering off` (by
    default it spools the whole body to a temporary file first)."""
    spec = nginx_spec(work, free_port(), validator_port, upstream_port)
    conf = Path(spec.argv[spec.argv.index("-c") + 1])
    text = conf.read_text()
    conf.write_text(
        text.replace("http {\n", "http {\n    client_max_body_size 0;\n    proxy_request_buffering off;\n", 1)
    )
    return pinned(spec, "0")


def proxy(config: Path, upstream_port: int) -> ServiceSpec:
    port = free_port()
    argv = [str(BIN / "mltokens"), "--config", str(config), "proxy", "--port", str(port), "--log-level", "WARNING"]
    argv += ["--upstream", f"http://127.0.0.1:{upstream_port}"]
    return pinned(ServiceSpec("proxy", argv, f"http://127.0.0.1:{port}/_mltokens/readyz"), "0")


def validator(config: Path) -> ServiceSpec:
    port = free_port()
    argv = [str(BIN / "mltokens"), "--config", str(config), "serve", "--port", str(port), "--log-level", "WARNING"]
    return pinned(ServiceSpec("validator", argv, f"http://127.0.0.1:{port}/readyz"), "0")


def cpu_seconds(*processes: Running) -> float:
    """CPU time (user + system) used so far by these processes and their children (nginx's workers)."""
    pids = [r.process.pid for r in processes]
    for r in processes:
        children = subprocess.run(["pgrep", "-P", str(r.process.pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in children.split()]
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def transfer(port: int, token: str, blob: Path | None) -> float:
    """Bytes/s of one download of the large body through a contender, or of one upload of `blob`."""
    if blob is None:
        argv = ["-w", "%{speed_download}", f"http://127.0.0.1:{port}{DOWNLOAD_PATH}"]
    else:  # PUT with Content-Length, streamed from the file; no `Expect: 100-continue` round trip
        argv = ["-w", "%{speed_upload}", "-T", str(blob), "-H", "Expect:", f"http://127.0.0.1:{port}{UPLOAD_PATH}"]
    out = subprocess.run(
        ["taskset", "-c", "1", "curl", "-sf", "-o", "/dev/null", "-H", f"Authorization: Bearer {token}", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    return float(out)


WAYS = ("download", "upload")


@dataclass
class Moved:
    """One contender's transfers of the large body one way: bytes/s and CPU seconds a GiB, per round."""

    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, rate: float, cpu: float, mib: int) -> None:
        self.rates.append(rate)
        self.cpu.append(cpu / (mib / 1024))

    def summary(self) -> str:
        median = statistics.median
        return f"{median(self.rates[1:]) / 2**20:7.0f} MiB/s  CPU {median(self.cpu[1:]):5.2f} s/GiB"


def run(db_url: str, work: Path, seconds: int, repeat: int, mib: int) -> None:
    """Start everything on one database, measure, print."""
    logs = work / "logs"
    issuer_port = free_port()
    config = write_config(
        work / "proxy.toml", db_url, f"http://127.0.0.1:{issuer_port}", ROOT / "devstack" / "policy.yaml"
    )
    settings = Settings.load(config, env={})
    store = Store(db_url)
    issuer = LocalIssuer(settings, store, lambda: datetime.now(UTC))
    issuer.keys.rotate(datetime.now(UTC))
    tokens = mint(issuer, 300, work, "proxy-warm")
    token = mint(issuer, 1, work, "proxy-train", (ROLE, "model:sentiment:train")).read_text().split()[0]
    end = sink()
    up = upstream(work, mib, spec_port(end))
    blob = work / "upstream" / "blob.bin"
    up_port = spec_port(up)
    check = validator(config)
    servers = {"validator": check, "nginx": gateway(work, spec_port(check), up_port), "proxy": proxy(config, up_port)}
    running: dict[str, Running] = {}
    contenders = {"mltokens proxy": ("proxy", ()), "nginx auth_request + validator": ("nginx", ("validator",))}
    rows: dict[str, list[dict[str, float]]] = {label: [] for label in contenders}
    cpu: dict[str, list[float]] = {label: [] for label in contenders}
    moved = {(label, way): Moved() for label in contenders for way in WAYS}
    try:
        running["issuer"] = start(issuer_spec(config, issuer_port), logs)
        running["sink"] = start(end, logs)
        running["upstream"] = start(up, logs)
        for name, spec in servers.items():
            running[name] = start(spec, logs, timeout=60)
        for _ in range(repeat + 1):  # the first round warms up and is not counted
            for label, (name, helpers) in contenders.items():
                with alone(running, name, (*helpers, "issuer", "upstream", "sink")):
                    processes = [running[name], *(running[h] for h in helpers)]
                    used = cpu_seconds(*processes)
                    rows[label].append(wrk(spec_port(servers[name]), tokens, seconds, MODEL_PATH))
                    used = cpu_seconds(*processes) - used
                    cpu[label].append(used / rows[label][-1]["requests"] * 1e6)
                    for way in WAYS:
                        used = cpu_seconds(*processes)
                        rate = transfer(spec_port(servers[name]), token, blob if way == "upload" else None)
                        moved[label, way].add(rate, cpu_seconds(*processes) - used, mib)
    finally:
        for r in reversed(running.values()):
            r.stop()
        store.dispose()
    print(f"\nproxy mode, same upstream (nginx on CPU 1), {seconds}s x {repeat} rounds (median):")
    median = statistics.median
    for label in contenders:
        rs = rows[label][1:]
        print(
            f"  {label:32} {median(r['rps'] for r in rs):8.0f}/s  p50 {median(r['p50_ms'] for r in rs):7.2f} ms  "
            f"p99 {median(r['p99_ms'] for r in rs):7.2f} ms  non-2xx {sum(int(r['non2xx'] + r['errors']) for r in rs)}"
            f"  CPU {median(cpu[label][1:]):4.0f} µs/request"
        )
    print(f"large body ({mib} MiB), one transfer a round (median); CPU: the contender's processes, seconds a GiB:")
    for way in WAYS:
        for label in contenders:
            print(f"  {way:8} {label:32} {moved[label, way].summary()}")
        ours, theirs = (median(moved[label, way].rates[1:]) for label in contenders)
        print(f"  {way:8} {'proxy / nginx':32} bytes/s {ours / theirs:6.0%}  (target: at least 80%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mib", type=int, default=1024, help="size of the large body, MiB")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mltokens-bench-proxy-"))
    print(f"work directory and service logs: {work}")
    with database(0) as db_url:
        run(db_url, work, args.seconds, args.repeat, args.mib)


if __name__ == "__main__":
    main()
