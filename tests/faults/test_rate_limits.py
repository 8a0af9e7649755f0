"""Two real validator processes share rate limit counters through the real Redis; one of
them loses Redis (a cut TcpProxy) and keeps limiting with its local counters."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
import yaml

from tests.faults.harness import DEMO_POLICY, Deployment, predict, via, wait_for
from tests.support.stack import Stack, TcpProxy

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"mlt-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis(port=6379)
    keys = list(client.scan_iter(prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def call(validator: str, token: str) -> requests.Response:
    return predict(validator, token)


def metric(validator: str, name: str) -> float:
    text = requests.get(validator + "/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_two_validators_share_limits_through_redis_and_fall_back_locally(
    deployment: Deployment, tmp_path: Path, prefix: str
) -> None:
    policy = yaml.safe_load(DEMO_POLICY.read_text())
    policy["routes"][0]["daily_quota"] = 3  # predict
    policy_file = tmp_path / "limited.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    redis_proxy = deployment.proxy(6379)
    shared = {"policy": policy_file, "redis_key_prefix": prefix, "redis_retry_interval": "300ms"}
    a = deployment.validator("validator-a", redis_url=REDIS, **shared)
    b = deployment.validator("validator-b", redis_url=via(REDIS, redis_proxy, 6379), **shared)

    # The token's own rate (0.01/s, burst 1) is counted once across both validators.
    slow, _ = deployment.token("slow", rate_limit=0.01)
    assert call(a, slow).status_code == 200
    r = call(b, slow)
    assert r.status_code == 429 and 95 <= int(r.headers["Retry-After"]) <= 100
    assert r.json() == {"error": "rate_limited"} and "caller" not in r.text
    assert metric(b, 'mltokens_validator_decisions_total{reason="rate_limited",status="429"}') == 1

    # The route's daily quota (3 per token) likewise.
    plain, _ = deployment.token("plain")
    assert [call(v, plain).status_code for v in (a, b, a, b)] == [200, 200, 200, 429]
    r = call(a, plain)
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 86400
    assert metric(a, 'mltokens_validator_decisions_total{reason="quota_exceeded",status="429"}') == 1

    # B loses Redis: it counts locally (limits still hold within B), A keeps Redis.
    redis_proxy.cut()
    fresh, _ = deployment.token("fresh", rate_limit=0.01)
    assert [call(b, fresh).status_code for _ in range(2)] == [200, 429]
    assert metric(b, "mltokens_validator_ratelimit_local_fallback") == 1
    assert metric(b, "mltokens_validator_ratelimit_redis_errors_total") >= 1
    assert call(a, fresh).status_code == 200  # B's local count is not shared: the documented over-admission
    assert "Redis unreachable" in deployment.running[-1].log_path.read_text()

    # Redis back: B shares A's counters again.
    redis_proxy.restore()
    wait_for(
        lambda: call(b, fresh).status_code == 429 and metric(b, "mltokens_validator_ratelimit_local_fallback") == 0,
        5.0,
        "B back on Redis",
    )
    assert call(b, plain).status_code == 429


def test_429_and_retry_after_reach_the_client_through_real_nginx(db_url: str, tmp_path: Path) -> None:
    """nginx's auth_request only passes 401 and 403 on; the demo config maps the validator's 429
    and 503 back (503: its PostgreSQL connection, through a TcpProxy, is cut)."""
    policy = yaml.safe_load(DEMO_POLICY.read_text())
    policy["routes"][0]["daily_quota"] = 1
    policy_file = tmp_path / "limited.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    proxy = TcpProxy(5432)
    try:
        with Stack(via(db_url, proxy, 5432), tmp_path, gateway="nginx", policy=policy_file) as stack:
            token, _ = stack.create_token(["model:sentiment:predict"])
            url = stack.gateway_url + "/v1/models/sentiment/predict"
            headers = {"Authorization": f"Bearer {token}"}
            assert requests.post(url, headers=headers, json={"text": "fine"}, timeout=5).status_code == 200
            r = requests.post(url, headers=headers, json={"text": "fine"}, timeout=5)
            assert r.status_code == 429, r.text
            assert 1 <= int(r.headers["Retry-After"]) <= 86400 and "caller" not in r.text
            r = requests.post(url, headers={"Authorization": "Bearer nope"}, timeout=5)
            assert r.status_code == 401  # other answers unchanged
            proxy.cut()
            wait_for(lambda: requests.post(url, headers=headers, timeout=5).status_code == 503, 10, "503 through nginx")
            r = requests.post(url, headers=headers, timeout=5)
            assert r.headers["Retry-After"] == "5" and r.json() == {"error": "temporarily_unavailable"}
    finally:
        proxy.close()
