"""Per-token rate limits and daily quotas: policy and claim parsing, local counters on a
fake clock, the Redis script on the real Redis (shared by two limiters), Redis failures
falling back to local counters, and the limits a decision carries."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
import redis

from tests.support.stack import TcpProxy, free_port
from tests.validator import tokens
from token_service.errors import ConfigError
from token_service.issuers import Owner
from token_service.issuers.local import LocalIssuer
from token_service.lifecycle import Lifecycle
from token_service.validator.decision import Decider, Decision
from token_service.validator.policy import Policy
from token_service.validator.ratelimit import (
    DAY,
    Exceeded,
    Limit,
    Limiter,
    LocalCounters,
    route_limit,
    token_limit,
)
from token_service.validator.reasons import Reason

REDIS_PORT = 6379
PREDICT = ("POST", "/v1/models/sentiment/predict")


def _policy(**limits: Any) -> Policy:
    return Policy.from_mapping(
        {
            "routes": [
                {
                    "path": "/v1/models/{model}/predict",
                    "methods": ["POST"],
                    "roles": ["model:{model}:predict"],
                    **limits,
                },
                {"path": "/v1/models/{model}/train", "methods": ["POST"], "roles": ["model:{model}:train"]},
            ]
        }
    )


class WallClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the shared Redis, deleted afterwards."""
    prefix = f"mlt-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis(port=REDIS_PORT)
    keys = list(client.scan_iter(prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


# -- parsing -------------------------------------------------------------------------


def test_route_limits_are_parsed_from_the_policy() -> None:
    rule = _policy(rate_limit=2.5, burst=4, daily_quota=100).rules[0]
    assert rule.limit is not None and rule.limit.scope.startswith("route:")
    assert (rule.limit.rps, rule.limit.burst, rule.limit.daily) == (2.5, 4, 100)
    assert _policy(rate_limit=2.5).rules[0].limit.burst == 3  # type: ignore[union-attr]
    assert _policy(daily_quota=5).rules[0].limit == Limit(rule.limit.scope, None, None, 5)
    assert _policy().rules[0].limit is None and _policy().rules[1].limit is None
    scopes = {
        route_limit(path, frozenset({"POST"}), 1.0, None, None).scope  # type: ignore[union-attr]
        for path in ("/v1/models/{model}/predict", "/v1/models/{model}/train")
    }
    assert len(scopes) == 2 and rule.limit.scope in scopes


@pytest.mark.parametrize(
    "limits",
    [
        {"rate_limit": 0},
        {"rate_limit": -1},
        {"rate_limit": "5"},
        {"rate_limit": True},
        {"rate_limit": float("nan")},
        {"rate_limit": float("inf")},
        {"daily_quota": 0},
        {"daily_quota": 1.5},
        {"burst": 3},
        {"rate_limit": 1, "burst": 0},
        {"rate_limit": 1, "rps": 2},
    ],
)
def test_bad_route_limits_are_refused(limits: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        _policy(**limits)


def test_anonymous_routes_cannot_have_limits() -> None:
    with pytest.raises(ConfigError, match="unexpected"):
        Policy.from_mapping({"anonymous": [{"path": "/healthz", "rate_limit": 1}]})


@pytest.mark.parametrize(
    "claim, expected",
    [
        (None, None),
        ({}, None),
        ({"rps": 5}, Limit("token", 5.0, 5, None)),
        ({"rps": 0.5, "daily": 10}, Limit("token", 0.5, 1, 10)),
        ({"daily": 7}, Limit("token", None, None, 7)),
    ],
)
def test_token_limits_claim(claim: Any, expected: Limit | None) -> None:
    assert token_limit(claim) == expected


@pytest.mark.parametrize(
    "claim",
    [
        [],
        "5",
        {"rps": 0},
        {"rps": "5"},
        {"rps": True},
        {"daily": 1.5},
        {"daily": 0},
        {"rps": 1, "burst": 9},
        {"rps": float("inf")},
    ],
)
def test_malformed_token_limits_claim(claim: Any) -> None:
    with pytest.raises(ValueError):
        token_limit(claim)


# -- local counters --------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = WallClock(1_000_000.0)
    counters = LocalCounters(clock, clock)
    limit = (Limit("route:x", 2.0, 3, None),)
    assert [counters.take("t1", limit) for _ in range(3)] == [None, None, None]
    assert counters.take("t1", limit) == Exceeded(Reason.RATE_LIMITED, 1)
    assert counters.take("t2", limit) is None  # counted per token
    clock.now += 0.5  # one token back at 2/s
    assert counters.take("t1", limit) is None
    assert counters.take("t1", limit) is not None
    clock.now += 10  # refills to the burst, not beyond
    assert [counters.take("t1", limit) for _ in range(4)] == [None, None, None, Exceeded(Reason.RATE_LIMITED, 1)]


def test_slow_rate_tells_how_long_to_wait() -> None:
    clock = WallClock(1_000_000.0)
    counters = LocalCounters(clock, clock)
    limit = (Limit("token", 0.1, 1, None),)
    assert counters.take("t", limit) is None
    assert counters.take("t", limit) == Exceeded(Reason.RATE_LIMITED, 10)
    clock.now += 9.5
    assert counters.take("t", limit) == Exceeded(Reason.RATE_LIMITED, 1)


def test_daily_quota_resets_at_utc_midnight_and_retry_after_points_there() -> None:
    midnight = datetime(2026, 11, 22, tzinfo=UTC).timestamp()
    clock = WallClock(midnight - 100.25)
    counters = LocalCounters(clock, clock)
    limit = (Limit("token", None, None, 2),)
    assert [counters.take("t", limit) for _ in range(2)] == [None, None]
    assert counters.take("t", limit) == Exceeded(Reason.QUOTA_EXCEEDED, 101)
    clock.now = midnight
    assert counters.take("t", limit) is None


def test_stricter_limit_wins_and_a_refused_request_counts_against_none() -> None:
    clock = WallClock(1_000_000.0)
    counters = LocalCounters(clock, clock)
    route, own = Limit("route:x", 100.0, 100, None), Limit("token", None, None, 2)
    taken = [counters.take("t", (route, own)) for _ in range(3)]
    assert taken == [None, None, Exceeded(Reason.QUOTA_EXCEEDED, DAY - 1_000_000 % DAY)]
    assert counters.buckets[("route:x", "t")][0] == 98  # the refused third request took no bucket token
    other_route = Limit("route:y", 1.0, 1, None)
    assert counters.take("t", (other_route, own)) is not None  # the token's own quota spans routes
    assert counters.take("t", (other_route,)) is None


def test_a_wall_clock_step_back_neither_stalls_nor_refills_a_bucket() -> None:
    wall, monotonic = WallClock(1_000_000.0), WallClock(50.0)
    counters = LocalCounters(wall, monotonic)
    limit = (Limit("token", 1.0, 1, None),)
    assert counters.take("t", limit) is None
    wall.now -= 3600  # NTP steps the wall clock back an hour
    assert counters.take("t", limit) == Exceeded(Reason.RATE_LIMITED, 1)
    monotonic.now += 1.0
    assert counters.take("t", limit) is None
    wall.now += 7200  # and forward two hours: no refill from that either
    assert counters.take("t", limit) == Exceeded(Reason.RATE_LIMITED, 1)


def test_sweep_forgets_full_buckets_and_past_days() -> None:
    clock = WallClock(1_000_000.0)
    counters = LocalCounters(clock, clock)
    fast, slow, quota = Limit("a", 10.0, 10, None), Limit("b", 0.01, 1, None), Limit("c", None, None, 5)
    for key in ("t1", "t2"):
        counters.take(key, (fast, slow, quota))
    assert len(counters) == 6
    counters.sweep(clock.now + 1, clock.now + 1)
    assert len(counters.buckets) == 2 and len(counters.days) == 2  # fast buckets full again
    counters.sweep(clock.now + DAY, clock.now + DAY)
    assert len(counters) == 0


# -- Redis -----------------------------------------------------------------------------


def test_redis_counters_are_shared_and_atomic(redis_prefix: str) -> None:
    async def scenario() -> None:
        a = Limiter(f"redis://127.0.0.1:{REDIS_PORT}/0", redis_prefix)
        b = Limiter(f"redis://127.0.0.1:{REDIS_PORT}/0", redis_prefix)
        try:
            limits = (Limit("route:x", 0.5, 4, None), Limit("token", None, None, 6))
            results = await asyncio.gather(*(lim.take("t", limits) for lim in (a, b) * 3))
            assert sorted(map(str, results)) == sorted(map(str, [None] * 4 + [Exceeded(Reason.RATE_LIMITED, 2)] * 2))
            assert await a.take("other", limits) is None
            quota_only = (Limit("token", None, None, 6),)
            assert [await b.take("t", quota_only) for _ in range(2)] == [None, None]
            exceeded = await a.take("t", quota_only)
            assert exceeded is not None and exceeded.reason == "quota_exceeded"
        finally:
            await a.close()
            await b.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))
    client = redis.Redis(port=REDIS_PORT)
    keys = list(client.scan_iter(redis_prefix + "*"))
    assert len(keys) == 4 and all(client.ttl(k) > 0 for k in keys)  # every key expires on its own
    client.close()


def test_redis_quota_retry_after_is_seconds_to_utc_midnight(redis_prefix: str) -> None:
    async def scenario() -> Exceeded | None:
        limiter = Limiter(f"redis://127.0.0.1:{REDIS_PORT}/0", redis_prefix)
        try:
            await limiter.take("t", (Limit("token", None, None, 1),))
            return await limiter.take("t", (Limit("token", None, None, 1),))
        finally:
            await limiter.close()

    exceeded = asyncio.run(asyncio.wait_for(scenario(), 20))
    server_now = redis.Redis(port=REDIS_PORT).time()[0]
    assert exceeded is not None and exceeded.reason == "quota_exceeded"
    assert abs(exceeded.retry_after - (DAY - server_now % DAY)) <= 2
    keys = redis.Redis(port=REDIS_PORT).keys(redis_prefix + "*")
    assert [k.decode() for k in keys] == [redis_prefix + "token:t"]
    assert 0 < redis.Redis(port=REDIS_PORT).ttl(keys[0]) <= DAY + 60


def test_redis_down_falls_back_to_local_counters_and_recovers(redis_prefix: str) -> None:
    proxy = TcpProxy(REDIS_PORT)
    events: list[str] = []

    async def scenario() -> None:
        limiter = Limiter(
            f"redis://127.0.0.1:{proxy.port}/0", redis_prefix, timeout=0.5, retry_interval=0.2, on_backend=events.append
        )
        limits = (Limit("route:x", 0.001, 2, None),)
        try:
            assert await limiter.take("t", limits) is None and limiter.shared  # 1 of 2 in Redis
            proxy.cut()
            # Local counters start full: 2 more, then refused (never unlimited).
            taken = [await limiter.take("t", limits) for _ in range(3)]
            assert taken == [None, None, Exceeded(Reason.RATE_LIMITED, 1000)]
            assert not limiter.shared and events[0] == "redis_error"
            proxy.restore()
            await asyncio.sleep(0.3)
            assert await limiter.take("t", limits) is None  # Redis again: its bucket still had 1
            assert limiter.shared and events[-1] == "redis_ok"
            assert await limiter.take("t", limits) == Exceeded(Reason.RATE_LIMITED, 1000)
        finally:
            await limiter.close()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 20))
    finally:
        proxy.close()


def test_slow_redis_times_out_to_local_counters_and_is_not_asked_again_until_the_retry_interval(
    redis_prefix: str,
) -> None:
    proxy = TcpProxy(REDIS_PORT)
    proxy.delay = 2.0
    events: list[str] = []

    async def scenario() -> list[Exceeded | None]:
        limiter = Limiter(
            f"redis://127.0.0.1:{proxy.port}/0", redis_prefix, timeout=0.2, retry_interval=60, on_backend=events.append
        )
        try:
            return [await limiter.take("t", (Limit("token", 0.001, 2, None),)) for _ in range(3)]
        finally:
            await limiter.close()

    try:
        assert asyncio.run(asyncio.wait_for(scenario(), 20)) == [None, None, Exceeded(Reason.RATE_LIMITED, 1000)]
    finally:
        proxy.close()
    assert events == ["redis_error"]  # one timed-out call, then local counting for the retry interval


def test_redis_never_reachable_still_limits() -> None:
    async def scenario() -> list[Exceeded | None]:
        limiter = Limiter(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
        try:
            return [await limiter.take("t", (Limit("token", 1.0, 1, None),)) for _ in range(2)]
        finally:
            await limiter.close()

    assert asyncio.run(asyncio.wait_for(scenario(), 20)) == [None, Exceeded(Reason.RATE_LIMITED, 1)]


# -- decisions carry the limits ------------------------------------------------------------


def test_decision_carries_route_and_token_limits(decider: Decider, served_lifecycle: Lifecycle) -> None:
    decider.policy = _policy(rate_limit=3, daily_quota=1000)
    own = served_lifecycle.create(
        Owner("u-alice", "alice"), "limited", ["model:sentiment:predict"], rate_limit=1.5, daily_quota=50
    )
    plain = served_lifecycle.create(Owner("u-alice", "alice"), "plain", ["model:sentiment:predict"])
    d = decider.decide(*PREDICT, own.secret)
    assert isinstance(d, Decision) and d.status == 200 and d.limit_key == own.info.id
    route = decider.policy.rules[0].limit
    assert d.limits == (route, Limit("token", 1.5, 2, 50))
    d = decider.decide(*PREDICT, plain.secret)
    assert isinstance(d, Decision) and d.limits == (route,)
    decider.policy = _policy()
    d = decider.decide(*PREDICT, plain.secret)
    assert isinstance(d, Decision) and d.limits == () and d.limit_key == ""


def test_malformed_limits_claim_is_refused(
    decider: Decider, served_lifecycle: Lifecycle, served_issuer: LocalIssuer
) -> None:
    issued = served_lifecycle.create(Owner("u-alice", "alice"), "t", ["model:sentiment:predict"])
    header, claims, _ = tokens.segments(issued.secret)
    kid, key = served_issuer.keys.signing_key()
    bad = jwt.encode({**claims, "limits": {"rps": "lots"}}, key, algorithm=header["alg"], headers={"kid": kid})
    d = decider.decide(*PREDICT, bad)
    assert isinstance(d, Decision) and (d.status, d.reason) == (401, "malformed_claim")
