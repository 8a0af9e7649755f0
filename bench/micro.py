"""CPU cost of one decision in-process, without HTTP: `.venv/bin/python -m bench.micro`.

Compares, on the same RS256 tokens of the local issuer: the validator's decision with
the verified-token cache hitting, with the cache off (lean parse + `cryptography`
verify + claims + revocation + policy), and the PyJWT reference (`token_service.verify`,
header + decode + claims, no revocation lookup). Prints µs per decision and ratios, and
what caching one more verified token costs when the cache is full.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from devstack.services import ROOT
from tests.support import pg
from token_service.config import Settings
from token_service.issuers import Grant, Owner
from token_service.issuers.local import LocalIssuer
from token_service.store import Store
from token_service.validator.decision import Decider, _Verified
from token_service.validator.jwks import KeyCache
from token_service.validator.policy import Policy
from token_service.validator.revocations import RevocationSet
from token_service.validator.settings import ValidatorSettings
from token_service.verify import verify

ISSUER = "http://issuer.bench"
PATH = "/v1/models/sentiment/predict"


def per_call_us(fn: Callable[[], Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter() - started) / rounds * 1e6)
    return best


def remember_us(keys: KeyCache, revocations: RevocationSet, policy: Policy, core: Settings, cache_size: int) -> float:
    """µs to cache one more verified token when the cache is full (an eviction each time), after
    as many evictions as the cache holds: the steady state of a stream of never-seen tokens."""
    vs = ValidatorSettings.from_mapping({"policy_file": "unused", "cache_size": cache_size}, core)
    decider = Decider(vs, keys, revocations, policy)
    entry = _Verified(None, b"")  # type: ignore[arg-type]
    digests = (os.urandom(32) for _ in itertools.count())
    for _ in range(2 * cache_size):
        decider._remember(next(digests), entry)
    return per_call_us(lambda: decider._remember(next(digests), entry), 2000)


def main() -> None:
    with pg.database(prefix="mlt_micro") as db_url:
        Store(db_url).upgrade()
        core = Settings.from_mapping({"database_url": db_url, "issuer_url": ISSUER, "key_passphrase": "micro"})
        store = Store(db_url)
        now = datetime.now(UTC)
        issuer = LocalIssuer(core, store, lambda: now)
        issuer.keys.rotate(now)
        jwks = issuer.jwks()
        documents = {ISSUER + "/.well-known/openid-configuration": issuer.discovery(), ISSUER + "/jwks": jwks}
        tokens = [
            issuer.issue(
                Grant(
                    str(uuid.uuid4()), "m", Owner("u", "u"), ("model:sentiment:predict",), now, now + timedelta(hours=1)
                )
            ).secret
            for _ in range(200)
        ]
        store.dispose()

    keys = KeyCache((ISSUER,), 300, 30, 5, fetch=lambda url, timeout: documents[url])
    asyncio.run(keys.refresh(ISSUER))
    revocations = RevocationSet()
    revocations.replace(((str(uuid.uuid4()), str(uuid.uuid4()), 0.0) for _ in range(100_000)), time.time())
    revocations.confirmed_at = float("inf")
    policy = Policy.load(ROOT / "devstack" / "policy.yaml")
    results: dict[str, float] = {}
    for name, cache_size in (("decision, cache hit", 10_000), ("decision, cache off", 0)):
        vs = ValidatorSettings.from_mapping({"policy_file": "unused", "cache_size": cache_size}, core)
        decider = Decider(vs, keys, revocations, policy)
        cycle = itertools.cycle(tokens)
        assert decider.decide("POST", PATH, tokens[0]).status == 200  # type: ignore[union-attr]
        results[name] = per_call_us(lambda d=decider, c=cycle: d.decide("POST", PATH, next(c)), 2000)
    cycle = itertools.cycle(tokens)
    assert verify(tokens[0], core, jwks, None).valid
    results["PyJWT reference (no revocation lookup)"] = per_call_us(lambda: verify(next(cycle), core, jwks, None), 500)
    reference = results["PyJWT reference (no revocation lookup)"]
    print(f"{len(tokens[0])}-byte RS256 tokens, 100,000 revocations loaded; best of 5, µs per decision:")
    for name, us in results.items():
        print(f"  {name:42} {us:8.1f} µs   {reference / us:5.1f}x the reference")
    print("caching one more verified token with the cache full (an eviction each time), best of 5:")
    for cache_size in (10_000, 100_000):
        print(f"  {cache_size:>7,} cached {remember_us(keys, revocations, policy, core, cache_size):31.2f} µs")


if __name__ == "__main__":
    main()
