"""Per-token rate limits (token bucket) and daily quotas (UTC day), local or shared in Redis.

A request that passed authentication and authorization may carry up to two limits:

- the route's, from the policy file (`rate_limit` requests/second, `burst`, `daily_quota`),
  counted per token *and* route;
- the token's own, from its signed `limits` claim (`{"rps": 5, "daily": 10000}`), counted
  per token over every route.

A request must fit every limit that applies (so the stricter one wins) and is counted
against all of them or none. Counters are keyed by token id (stable across renewals;
the `jti` when a token has no token id).

Without `redis_url` the counters live in the worker's memory: exact for one worker,
and with W workers on N replicas a token may get up to W×N times its limits. With
`redis_url` every limit is checked and counted by one Lua script (atomic, Redis server
clock), so all replicas share exact counters. When Redis cannot be reached the
validator fails open *to its local counters* (never to no limit) and tries Redis again
after `redis_retry_interval`; see docs/rate-limits.md for the reasoning.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .reasons import Reason

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)

DAY = 86400
SWEEP_INTERVAL = 60.0
NO_STORE = ("cache-control", "no-store")


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit: `rps` requests/second with `burst` (token bucket) and/or `daily` requests per UTC day.

    `scope` names what is counted: `token` (a token's own limits, over all routes) or
    `route:<id>` (a route's limits, per token).
    """

    scope: str
    rps: float | None = None
    burst: int | None = None
    daily: int | None = None


@dataclass(frozen=True, slots=True)
class Exceeded:
    """Why a request is over a limit and when to come back (whole seconds, at least 1)."""

    reason: Reason  # RATE_LIMITED or QUOTA_EXCEEDED
    retry_after: int

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return (NO_STORE, ("retry-after", str(self.retry_after)))


def default_burst(rps: float) -> int:
    """One second's worth of requests, at least one."""
    return max(1, math.ceil(rps))


def route_limit(
    pattern: str, methods: frozenset[str], rps: float | None, burst: int | None, daily: int | None
) -> Limit | None:
    """The limit of a policy route, or None when it sets none; its scope is stable across policy edits."""
    if rps is None and daily is None:
        return None
    digest = hashlib.blake2b(f"{pattern} {','.join(sorted(methods))}".encode(), digest_size=6).hexdigest()
    return Limit(f"route:{digest}", rps, (burst or default_burst(rps)) if rps is not None else None, daily)


def token_limit(claim: Any) -> Limit | None:
    """The limit carried in a token's `limits` claim; ValueError if present but malformed."""
    if claim is None:
        return None
    if not isinstance(claim, dict) or set(claim) - {"rps", "daily"}:
        raise ValueError("limits claim must be an object with rps and/or daily")
    rps, daily = claim.get("rps"), claim.get("daily")
    if rps is not None and (isinstance(rps, bool) or not isinstance(rps, (int, float)) or not 0 < rps < math.inf):
        raise ValueError("limits.rps must be a positive number")
    if daily is not None and (isinstance(daily, bool) or not isinstance(daily, int) or daily <= 0):
        raise ValueError("limits.daily must be a positive whole number")
    if rps is None and daily is None:
        return None
    return Limit(
        "token", float(rps) if rps is not None else None, default_burst(rps) if rps is not None else None, daily
    )


def _exceeded(rate_wait: float, quota_wait: float) -> Exceeded | None:
    if rate_wait <= 0 and quota_wait <= 0:
        return None
    if quota_wait >= rate_wait:
        return Exceeded(Reason.QUOTA_EXCEEDED, max(1, math.ceil(quota_wait)))
    return Exceeded(Reason.RATE_LIMITED, max(1, math.ceil(rate_wait)))


class LocalCounters:
    """Buckets and day counts in this worker's memory; `take` is atomic within the event loop.

    Buckets run on the monotonic clock (a wall-clock step cannot stall or refill them);
    the UTC day comes from the wall clock.
    """

    def __init__(self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.wall = wall
        self.monotonic = monotonic
        self.buckets: dict[tuple[str, str], list[float]] = {}  # (scope, key) -> [tokens, at, full again at]
        self.days: dict[tuple[str, str], list[int]] = {}  # (scope, key) -> [day, used]
        self._swept = float("-inf")

    def __len__(self) -> int:
        return len(self.buckets) + len(self.days)

    def take(self, key: str, limits: tuple[Limit, ...]) -> Exceeded | None:
        """Count one request against every limit, or against none when any is exhausted."""
        now, wall = self.monotonic(), self.wall()
        if now - self._swept > SWEEP_INTERVAL:
            self.sweep(now, wall)
        day = int(wall // DAY)
        rate_wait = quota_wait = 0.0
        refilled: list[tuple[tuple[str, str], float, float, float]] = []
        counted: list[tuple[tuple[str, str], int]] = []
        for limit in limits:
            slot = (limit.scope, key)
            if limit.rps is not None and limit.burst is not None:
                state = self.buckets.get(slot)
                tokens = (
                    float(limit.burst)
                    if state is None
                    else min(float(limit.burst), state[0] + max(0.0, now - state[1]) * limit.rps)
                )
                if tokens < 1:
                    rate_wait = max(rate_wait, (1 - tokens) / limit.rps)
                refilled.append((slot, tokens, limit.rps, float(limit.burst)))
            if limit.daily is not None:
                entry = self.days.get(slot)
                used = entry[1] if entry is not None and entry[0] == day else 0
                if used >= limit.daily:
                    quota_wait = (day + 1) * DAY - wall
                counted.append((slot, used))
        exceeded = _exceeded(rate_wait, quota_wait)
        if exceeded is None:
            for slot, tokens, rps, burst in refilled:
                self.buckets[slot] = [tokens - 1, now, now + (burst - tokens + 1) / rps]
            for slot, used in counted:
                self.days[slot] = [day, used + 1]
        return exceeded

    def sweep(self, now: float, wall: float) -> None:
        """Forget buckets full again by monotonic `now` (a missing bucket is a full one) and past days."""
        self._swept = now
        day = int(wall // DAY)
        self.buckets = {slot: state for slot, state in self.buckets.items() if state[2] > now}
        self.days = {slot: entry for slot, entry in self.days.items() if entry[0] == day}


# KEYS: one hash per limit. ARGV: per limit, rps, burst, daily (0 = not set).
# Server time (TIME) is the clock, so replicas with skewed clocks still agree.
TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local day = math.floor(now / 86400)
local rate_wait, quota_wait = 0, 0
local tokens, used, ttl = {}, {}, {}
for i = 1, #KEYS do
  local rps, burst, daily = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local s = redis.call('HMGET', KEYS[i], 'tokens', 'at', 'day', 'used')
  ttl[i] = 1
  if rps > 0 then
    local tk = tonumber(s[1]) or burst
    local at = tonumber(s[2]) or now
    tk = math.min(burst, tk + math.max(0, now - at) * rps)
    if tk < 1 then rate_wait = math.max(rate_wait, (1 - tk) / rps) end
    tokens[i] = tk
    ttl[i] = math.ceil(burst / rps) + 1
  end
  if daily > 0 then
    local u = 0
    if tonumber(s[3]) == day then u = tonumber(s[4]) or 0 end
    if u >= daily then quota_wait = (day + 1) * 86400 - now end
    used[i] = u
    ttl[i] = math.max(ttl[i], math.ceil((day + 1) * 86400 - now) + 60)
  end
end
local allowed = rate_wait <= 0 and quota_wait <= 0
for i = 1, #KEYS do
  if tokens[i] then
    -- refused: keep the refill (at = now), so a step back of the server clock cannot stall a bucket
    local left = tokens[i]
    if allowed then left = left - 1 end
    redis.call('HSET', KEYS[i], 'tokens', tostring(left), 'at', tostring(now))
  end
  if allowed and used[i] then
    redis.call('HSET', KEYS[i], 'day', day, 'used', used[i] + 1)
  end
  if allowed or tokens[i] then redis.call('EXPIRE', KEYS[i], ttl[i]) end
end
if allowed then return {1, '0', '0'} end
return {0, tostring(rate_wait), tostring(quota_wait)}
"""


class Limiter:
    """Local counters, or Redis shared by all replicas with local counters while Redis is down."""

    def __init__(
        self,
        redis_url: str = "",
        key_prefix: str = "mltokens:rl:",
        timeout: float = 0.25,
        retry_interval: float = 1.0,
        on_backend: Callable[[str], None] = lambda state: None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local = LocalCounters(wall, monotonic)
        self.prefix = key_prefix
        self.retry_interval = retry_interval
        self.on_backend = on_backend  # "redis_error" on each failure, "redis_ok" on recovery
        self.monotonic = monotonic
        self.redis: aioredis.Redis | None = None
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        if redis_url:
            # Imported only when configured: the client's memory in every worker (docs/benchmarks.md,
            # "Costs the code relies on").
            import redis.asyncio as aioredis
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisError
            from redis.retry import Retry

            self.redis = aioredis.Redis.from_url(
                redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
            )
            self._script = self.redis.register_script(TAKE_SCRIPT)
            self._errors += (RedisError,)
        self.degraded = False
        self._retry_at = float("-inf")

    @property
    def shared(self) -> bool:
        """Whether counts currently go to Redis (False without Redis or while it is unreachable)."""
        return self.redis is not None and not self.degraded

    async def take(self, key: str, limits: tuple[Limit, ...]) -> Exceeded | None:
        """Count one request for `key` (a token id) against `limits`; an Exceeded when over one."""
        if self.redis is None or (self.degraded and self.monotonic() < self._retry_at):
            return self.local.take(key, limits)
        keys = [f"{self.prefix}{limit.scope}:{key}" for limit in limits]
        args: list[float | int] = []
        for limit in limits:
            args += [limit.rps or 0, limit.burst or 0, limit.daily or 0]
        try:
            allowed, rate_wait, quota_wait = await self._script(keys=keys, args=args)
        except self._errors as exc:
            self._failed(exc)
            return self.local.take(key, limits)
        if self.degraded:
            self.degraded = False
            self.on_backend("redis_ok")
            log.warning("rate limit counters: Redis reachable again; shared counters resumed")
        if int(allowed):
            return None
        return _exceeded(float(rate_wait), float(quota_wait))

    def _failed(self, exc: BaseException) -> None:
        self._retry_at = self.monotonic() + self.retry_interval
        self.on_backend("redis_error")
        if not self.degraded:
            self.degraded = True
            log.warning(
                "rate limit counters: Redis unreachable (%s: %s); counting locally in this worker, "
                "retrying every %.1fs",
                type(exc).__name__,
                str(exc)[:200],
                self.retry_interval,
            )

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
