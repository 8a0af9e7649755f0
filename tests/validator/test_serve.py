"""`mltokens serve` as a real process: several workers, metrics across them, graceful shutdown,
slow clients."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from tests.support.stack import children, free_port, issuer_spec, mltokens, start, validator_spec, write_config
from token_service.config import Settings
from token_service.issuers import Owner
from token_service.issuers.local import LocalIssuer
from token_service.lifecycle import Lifecycle, utcnow
from token_service.store import Store
from token_service.validator import build

POLICY = Path(__file__).resolve().parents[2] / "devstack" / "policy.yaml"


def test_two_workers_aggregate_metrics_and_flush_usage_on_sigterm(db_url: str, tmp_path: Path) -> None:
    issuer_port, port = free_port(), free_port()
    config = write_config(
        tmp_path / "m.toml",
        db_url,
        f"http://127.0.0.1:{issuer_port}",
        POLICY,
        usage_flush_interval="1h",
        heartbeat_interval="200ms",
        max_staleness="3s",
    )
    subprocess.run(mltokens(config, "keys", "rotate"), check=True, capture_output=True, timeout=60)
    settings = Settings.load(config, env={})
    store = Store(db_url)
    lifecycle = Lifecycle(settings, store, LocalIssuer(settings, store, utcnow))
    issued = lifecycle.create(Owner("u-bob", "bob"), "t", ["model:sentiment:predict"])
    issuer = start(issuer_spec(config, issuer_port), tmp_path / "logs")
    validator = start(validator_spec(config, port, workers=2), tmp_path / "logs", timeout=30)
    base = f"http://127.0.0.1:{port}"
    try:
        # /readyz reaches one worker per connection: wait until ten fresh connections in a row
        # find a ready worker, so both have loaded (a worker answers 503 until it has).
        streak, deadline = 0, time.monotonic() + 20
        while streak < 10:
            assert time.monotonic() < deadline, "workers not ready"
            streak = streak + 1 if requests.get(base + "/readyz", timeout=5).status_code == 200 else 0
        headers = {"Authorization": f"Bearer {issued.secret}"}
        for _ in range(20):  # new connections, spread over both workers
            r = requests.post(
                base + "/auth/envoy/v1/models/sentiment/predict", headers=headers, timeout=5, stream=False
            )
            assert r.status_code == 200
        assert requests.post(base + "/auth/envoy/v1/a%2Fb", headers=headers, timeout=5).status_code == 403
        huge = {"Authorization": "Bearer " + "a" * 65536}
        assert requests.post(base + "/auth/envoy/v1/models/sentiment/predict", headers=huge, timeout=5).status_code in (
            401,
            431,
        )
        # Each worker moves its counts into the shared files every second (and on its own scrapes).
        expected = 'mltokens_validator_decisions_total{reason="allowed",status="200"} 20.0'
        deadline = time.monotonic() + 5
        while expected not in (metrics := requests.get(base + "/metrics", timeout=5).text):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
        assert len(children(validator.process.pid)) == 2

        started = time.monotonic()
        validator.process.send_signal(signal.SIGTERM)
        assert validator.process.wait(15) == 0
        assert time.monotonic() - started < 15
    finally:
        validator.stop()
        issuer.stop()
    with store.engine.connect() as conn:
        count = conn.execute(text("SELECT use_count FROM mltokens.token WHERE id = :id"), {"id": issued.info.id})
        assert count.scalar() == 20  # usage_flush_interval is 1 h: only the shutdown flush wrote these
    store.dispose()
    # the start names the build that runs: which hot modules are compiled, which pure Python
    assert f"validator build: {build.summary()}" in validator.log_path.read_text()


REQUEST_TIMEOUT = 1.0
SLOW_CLIENTS = 300


async def _trickle(port: int, give_up: float) -> float:
    """Send a request head one byte every 0.2 s; seconds from the first byte until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    first = loop.time()
    head = b"POST /auth/envoy/v1/models/sentiment/predict HTTP/1.1\r\nHost: v\r\nX-Padding: " + b"a" * 200
    try:
        for byte in head:
            writer.write(bytes([byte]))
            try:
                with contextlib.suppress(TimeoutError):  # still open: send the next byte
                    if await asyncio.wait_for(reader.read(1), 0.2) == b"":
                        return loop.time() - first
            except ConnectionError:
                return loop.time() - first
            if loop.time() - first > give_up:
                break
        return float("inf")
    finally:
        writer.close()


async def _decide(port: int, token: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /auth/envoy/v1/models/sentiment/predict HTTP/1.1\r\nHost: v\r\n"
        b"Authorization: Bearer %s\r\nConnection: close\r\n\r\n" % token.encode()
    )
    status = int((await asyncio.wait_for(reader.readline(), 5)).split()[1])
    writer.close()
    return status


async def _slow_and_normal_clients(port: int, token: str) -> tuple[list[float], list[int]]:
    slow = [asyncio.create_task(_trickle(port, give_up=REQUEST_TIMEOUT + 5)) for _ in range(SLOW_CLIENTS)]
    statuses = []
    while not all(task.done() for task in slow):  # others are served while the slow ones trickle
        statuses.append(await _decide(port, token))
        await asyncio.sleep(0.1)
    return [task.result() for task in slow], statuses


def test_slow_clients_are_dropped_at_their_request_deadline_while_others_are_served(
    db_url: str, tmp_path: Path
) -> None:
    """Hundreds of connections trickling a request head (slowloris) are each closed
    `request_timeout` after their first byte, however late the server's timer fires."""
    issuer_port, port = free_port(), free_port()
    config = write_config(
        tmp_path / "m.toml",
        db_url,
        f"http://127.0.0.1:{issuer_port}",
        POLICY,
        request_timeout=f"{REQUEST_TIMEOUT}s",
        heartbeat_interval="200ms",
        max_staleness="3s",
    )
    subprocess.run(mltokens(config, "keys", "rotate"), check=True, capture_output=True, timeout=60)
    settings = Settings.load(config, env={})
    store = Store(db_url)
    token = (
        Lifecycle(settings, store, LocalIssuer(settings, store, utcnow))
        .create(Owner("u-bob", "bob"), "t", ["model:sentiment:predict"])
        .secret
    )
    store.dispose()
    issuer = start(issuer_spec(config, issuer_port), tmp_path / "logs")
    validator = start(validator_spec(config, port), tmp_path / "logs", timeout=30)
    try:
        closed_after, statuses = asyncio.run(_slow_and_normal_clients(port, token))
    finally:
        validator.stop()
        issuer.stop()
    still_open = [t for t in closed_after if t > REQUEST_TIMEOUT + 1.5]
    assert not still_open, f"{len(still_open)} of {SLOW_CLIENTS} slow connections outlived the deadline"
    assert min(closed_after) >= REQUEST_TIMEOUT - 0.05  # the request bound, not an earlier cut
    assert len(statuses) >= 5 and set(statuses) == {200}


HOSTILE = 'raise SystemExit("imported {name}.py from the working directory")\n'


@pytest.mark.parametrize("server", ["lean", "granian"])
def test_serve_ignores_modules_in_the_working_directory(db_url: str, tmp_path: Path, server: str) -> None:
    """Files named like the validator's imports in the directory `mltokens serve` starts from are never
    imported: neither by the exec'd server nor by its spawned workers."""
    hostile = tmp_path / "cwd"
    hostile.mkdir()
    for name in ("jwt", "uvicorn", "asyncpg", "yaml", "httptools", "prometheus_client", "multiprocessing", "json"):
        (hostile / f"{name}.py").write_text(HOSTILE.format(name=name))
    issuer_port, port = free_port(), free_port()
    config = write_config(tmp_path / "m.toml", db_url, f"http://127.0.0.1:{issuer_port}", POLICY)
    subprocess.run(mltokens(config, "keys", "rotate"), check=True, capture_output=True, timeout=60)
    settings = Settings.load(config, env={})
    store = Store(db_url)
    issued = Lifecycle(settings, store, LocalIssuer(settings, store, utcnow)).create(
        Owner("u-bob", "bob"), "t", ["model:sentiment:predict"]
    )
    store.dispose()
    issuer = start(issuer_spec(config, issuer_port), tmp_path / "logs")
    spec = validator_spec(config, port, workers=2, server=server)
    spec.cwd = hostile
    try:
        validator = start(spec, tmp_path / "logs", timeout=30)
        try:
            r = requests.get(  # a header contract: granian refuses the Envoy prefix one (no raw path)
                f"http://127.0.0.1:{port}/auth/forward",
                headers={
                    "Authorization": f"Bearer {issued.secret}",
                    "X-Forwarded-Method": "POST",
                    "X-Forwarded-Uri": "/v1/models/sentiment/predict",
                },
                timeout=5,
            )
            assert r.status_code == 200
            assert len(children(validator.process.pid)) == 2
            assert "from the working directory" not in validator.log_tail(200)
        finally:
            validator.stop()
    finally:
        issuer.stop()
