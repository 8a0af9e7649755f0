"""`mltokens serve` as a real process: several workers, metrics across them, graceful shutdown."""
from __future__ import annotations

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

POLICY = Path(__file__).resolve().parents[2] / "demo" / "policy.yaml"


def test_two_workers_aggregate_metrics_and_flush_usage_on_sigterm(db_url: str, tmp_path: Path) -> None:
    issuer_port, port = free_port(), free_port()
    config = write_config(tmp_path / "m.toml", db_url, f"http://127.0.0.1:{issuer_port}", POLICY,
                          usage_flush_interval="1h", heartbeat_interval="200ms", max_staleness="3s")
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
            r = requests.post(base + "/auth/envoy/v1/models/sentiment/predict", headers=headers, timeout=5,
                              stream=False)
            assert r.status_code == 200
        assert requests.post(base + "/auth/envoy/v1/a%2Fb", headers=headers, timeout=5).status_code == 403
        huge = {"Authorization": "Bearer " + "a" * 65536}
        assert requests.post(base + "/auth/envoy/v1/models/sentiment/predict", headers=huge,
                             timeout=5).status_code in (401, 431)
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
        Owner("u-bob", "bob"), "t", ["model:sentiment:predict"])
    store.dispose()
    issuer = start(issuer_spec(config, issuer_port), tmp_path / "logs")
    spec = validator_spec(config, port, workers=2, server=server)
    spec.cwd = hostile
    try:
        validator = start(spec, tmp_path / "logs", timeout=30)
        try:
            r = requests.post(f"http://127.0.0.1:{port}/auth/envoy/v1/models/sentiment/predict",
                              headers={"Authorization": f"Bearer {issued.secret}"}, timeout=5)
            assert r.status_code == 200
            assert len(children(validator.process.pid)) == 2
            assert "from the working directory" not in validator.log_tail(200)
        finally:
            validator.stop()
    finally:
        issuer.stop()
