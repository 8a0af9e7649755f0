"""Key cache against a real issuer over HTTP: refetch limit, rotation, last good keys."""

from __future__ import annotations

import asyncio

import jwt

from tests.support.clock import Clock
from tests.validator import tokens
from token_service.issuers.local import LocalIssuer
from token_service.validator.jwks import KeyCache, discovery_url, fetch_json
from token_service.validator.settings import ValidatorSettings


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cache(vsettings: ValidatorSettings, ticks: Ticks, issuers: tuple[str, ...] | None = None) -> KeyCache:
    return KeyCache(issuers or vsettings.issuers, 300, 30, 2, monotonic=ticks)


def test_unknown_kids_trigger_at_most_one_refetch_per_interval(
    vsettings: ValidatorSettings, served_issuer: LocalIssuer
) -> None:
    ticks = Ticks()
    cache = _cache(vsettings, ticks)
    iss = served_issuer.issuer_url

    async def scenario() -> list[int]:
        assert await cache.refresh(iss)
        counts = [cache.issuers[iss].fetches]
        results = await asyncio.gather(*(cache.refetch_for_unknown_kid(iss) for _ in range(50)))
        assert all(results)  # one fetch, shared by every waiting request
        counts.append(cache.issuers[iss].fetches)
        ticks.now += 29
        results = await asyncio.gather(*(cache.refetch_for_unknown_kid(iss) for _ in range(50)))
        assert not any(results)
        counts.append(cache.issuers[iss].fetches)
        ticks.now += 1
        assert await cache.refetch_for_unknown_kid(iss)
        counts.append(cache.issuers[iss].fetches)
        return counts

    assert asyncio.run(scenario()) == [1, 2, 2, 3]


def test_rotated_key_is_found_by_refetch(
    vsettings: ValidatorSettings, served_issuer: LocalIssuer, clock: Clock
) -> None:
    ticks = Ticks()
    cache = _cache(vsettings, ticks)
    iss = served_issuer.issuer_url
    asyncio.run(cache.refresh(iss))
    old_kid = next(iter(cache.issuers[iss].keys))
    new_kid = served_issuer.keys.rotate(clock()).kid
    assert cache.get(iss, new_kid) is None
    ticks.now += 31
    assert asyncio.run(cache.refetch_for_unknown_kid(iss))
    assert cache.get(iss, new_kid) is not None and cache.get(iss, old_kid) is not None


def test_last_good_keys_are_kept_while_the_issuer_is_down(
    vsettings: ValidatorSettings, served_issuer: LocalIssuer
) -> None:
    iss = served_issuer.issuer_url
    results: list[str] = []
    cache = KeyCache((iss,), 300, 0, 1, on_refresh=lambda i, r: results.append(r))
    asyncio.run(cache.refresh(iss))
    kids = set(cache.issuers[iss].keys)
    cache.issuers[iss].jwks_uri = "http://127.0.0.1:9/jwks"  # nothing listens on the discard port
    assert not asyncio.run(cache.refresh(iss))
    assert set(cache.issuers[iss].keys) == kids and results == ["ok", "error"]


def test_discovery_must_name_the_configured_issuer(served_issuer: LocalIssuer) -> None:
    """The same server reached as localhost: its discovery names 127.0.0.1, so it is refused."""
    alias = served_issuer.issuer_url.replace("127.0.0.1", "localhost")
    cache = KeyCache((alias,), 300, 0, 1)
    assert not asyncio.run(cache.refresh(alias))
    assert not cache.ready and cache.issuers[alias].keys == {}


def test_an_issuer_may_be_discovered_at_another_url(served_issuer: LocalIssuer) -> None:
    """`discovery_urls`: the document is read where it is told (Keycloak's back channel), and must
    still name the trusted issuer exactly."""
    iss = served_issuer.issuer_url
    elsewhere = iss.replace("127.0.0.1", "localhost") + "/.well-known/openid-configuration"
    fetched: list[str] = []

    def fetch(url: str, timeout: float) -> dict:
        fetched.append(url)
        return fetch_json(url, timeout)

    cache = KeyCache((iss,), 300, 0, 1, fetch=fetch, discovery={iss: elsewhere})
    assert asyncio.run(cache.refresh(iss)) and cache.issuers[iss].keys
    assert fetched[0] == elsewhere
    # a document that names another issuer is refused, wherever it was read
    alias = iss.replace("127.0.0.1", "localhost")
    other = KeyCache((alias,), 300, 0, 1, discovery={alias: discovery_url(iss)})
    assert not asyncio.run(other.refresh(alias)) and not other.issuers[alias].keys


def test_small_rsa_keys_and_unknown_key_types_are_skipped(served_issuer: LocalIssuer) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from token_service.validator.jwks import key_from_jwk

    small = jwt.algorithms.RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 1024).public_key(), as_dict=True)
    for jwk in (
        {**small, "kid": "small"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {
            **jwt.algorithms.RSAAlgorithm.to_jwk(tokens.attacker_key().public_key(), as_dict=True),
            "kid": "enc",
            "use": "enc",
        },
    ):
        try:
            key_from_jwk(jwk)
        except ValueError:
            continue
        raise AssertionError(f"{jwk['kid']} accepted")
