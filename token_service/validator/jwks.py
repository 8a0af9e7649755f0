"""Issuer keys: OIDC discovery, JWKS cache, background refresh, rate-limited refetch.

Each configured issuer URL is discovered at `{issuer}/.well-known/openid-configuration`
(a trailing `/` of the URL removed first, as OpenID Connect Discovery 1.0 §4 says; its
`issuer` must equal the URL exactly as configured, slash included), then its `jwks_uri`
is fetched. An issuer may be discovered at another URL (`discovery_urls`: Keycloak's
back channel when `iss` is its public URL); the document must still name the issuer. Keys are refreshed in
the background; tokens with unknown `kid`s trigger at most one refetch per issuer per
`min_refetch_interval` (no refetch storm from random kids; scheduled refreshes do not
count, so a key rotated in just after a refresh is still fetched at first sight). When
a fetch fails the last good keys stay in use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .jwt_fast import PublicKey, TokenError, b64decode

log = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
MIN_RSA_BITS = 2048
MAX_DOCUMENT_BYTES = 1 << 20
_EC_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}

Fetcher = Callable[[str, float], dict[str, Any]]


def fetch_json(url: str, timeout: float) -> dict[str, Any]:
    """GET a JSON object over HTTP(S), bounded in time and size."""
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "mltokens-validator"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise ValueError(f"{url}: not a JSON object")
    return doc


def discovery_url(issuer: str) -> str:
    """Where an issuer publishes its discovery document (Auth0's `https://tenant/` included)."""
    return issuer.rstrip("/") + DISCOVERY_PATH


def _b64int(value: Any) -> int:
    if not isinstance(value, str):
        raise ValueError("not a base64url string")
    try:
        return int.from_bytes(b64decode(value.encode("ascii")), "big")
    except (TokenError, UnicodeEncodeError):
        raise ValueError("not a base64url string") from None


@dataclass(frozen=True, slots=True)
class Key:
    kid: str
    key: PublicKey
    alg: str | None


def key_from_jwk(jwk: dict[str, Any]) -> Key:
    """A verification key from a public JWK (RSA or EC); raises ValueError for anything else."""
    kid, kty, use = jwk.get("kid"), jwk.get("kty"), jwk.get("use")
    if not isinstance(kid, str) or not kid:
        raise ValueError("JWK without kid")
    if use not in (None, "sig"):
        raise ValueError(f"JWK {kid}: use {use!r} is not sig")
    alg = jwk.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise ValueError(f"JWK {kid}: alg is not a string")
    key: PublicKey
    if kty == "RSA":
        key = rsa.RSAPublicNumbers(_b64int(jwk.get("e")), _b64int(jwk.get("n"))).public_key()
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"JWK {kid}: RSA key of {key.key_size} bits is too small")
    elif kty == "EC" and jwk.get("crv") in _EC_CURVES:
        numbers = ec.EllipticCurvePublicNumbers(_b64int(jwk.get("x")), _b64int(jwk.get("y")), _EC_CURVES[jwk["crv"]])
        key = numbers.public_key()
    else:
        raise ValueError(f"JWK {kid}: key type {kty!r} is not supported")
    return Key(kid, key, alg)


@dataclass
class IssuerKeys:
    """One issuer's keys and the bookkeeping of their fetches."""

    issuer: str
    keys: dict[str, Key] = field(default_factory=dict)
    jwks_uri: str | None = None
    loaded: bool = False
    last_fetch: float = float("-inf")
    last_kid_refetch: float = float("-inf")
    fetches: int = 0
    in_flight: asyncio.Future[bool] | None = None


class KeyCache:
    """Keys of every trusted issuer, kept fresh in the background."""

    def __init__(
        self,
        issuers: tuple[str, ...],
        refresh_interval: float,
        min_refetch_interval: float,
        timeout: float,
        fetch: Fetcher = fetch_json,
        on_refresh: Callable[[str, str], None] = lambda issuer, result: None,
        on_keys_removed: Callable[[], None] = lambda: None,
        monotonic: Callable[[], float] = time.monotonic,
        required: tuple[str, ...] | None = None,
        discovery: Mapping[str, str] | None = None,
    ) -> None:
        self.issuers = {i: IssuerKeys(i) for i in issuers}
        self.discovery = dict(discovery or {})
        self.required = [self.issuers[i] for i in (issuers if required is None else required)]
        self.refresh_interval = refresh_interval
        self.min_refetch_interval = min_refetch_interval
        self.timeout = timeout
        self._fetch = fetch
        self._on_refresh = on_refresh
        self._on_keys_removed = on_keys_removed
        self._monotonic = monotonic

    @property
    def ready(self) -> bool:
        """Whether every issuer readiness needs has keys (others may still be retrying)."""
        return all(i.loaded for i in self.required)

    @property
    def all_loaded(self) -> bool:
        return all(i.loaded for i in self.issuers.values())

    def get(self, issuer: str, kid: str) -> Key | None:
        entry = self.issuers[issuer]
        return entry.keys.get(kid)

    async def refetch_for_unknown_kid(self, issuer: str) -> bool:
        """Refetch an issuer's keys if the rate limit allows; True when keys were refreshed."""
        entry = self.issuers[issuer]
        if entry.in_flight is not None:
            return await asyncio.shield(entry.in_flight)
        now = self._monotonic()
        if now - entry.last_kid_refetch < self.min_refetch_interval:
            return False
        entry.last_kid_refetch = now
        return await self.refresh(issuer)

    async def refresh(self, issuer: str) -> bool:
        """Fetch an issuer's discovery document (once) and JWKS; keep the old keys on failure."""
        entry = self.issuers[issuer]
        if entry.in_flight is not None:
            return await asyncio.shield(entry.in_flight)
        entry.in_flight = asyncio.get_running_loop().create_future()
        entry.last_fetch = self._monotonic()
        entry.fetches += 1
        ok = False
        try:
            keys = await asyncio.to_thread(self._load, entry)
            removed = set(entry.keys) - set(keys)
            entry.keys, entry.loaded, ok = keys, True, True
            self._on_refresh(issuer, "ok")
            if removed:
                log.info("issuer %s withdrew keys %s", issuer, sorted(removed))
                self._on_keys_removed()
        except Exception as exc:  # any failure: keep the last good keys
            self._on_refresh(issuer, "error")
            log.warning(
                "keys of issuer %s not refreshed (%s: %s); keeping %d last good key(s)",
                issuer,
                type(exc).__name__,
                exc,
                len(entry.keys),
            )
        finally:
            entry.in_flight.set_result(ok)
            entry.in_flight = None
        return ok

    def _load(self, entry: IssuerKeys) -> dict[str, Key]:
        if entry.jwks_uri is None:
            doc = self._fetch(self.discovery.get(entry.issuer) or discovery_url(entry.issuer), self.timeout)
            if doc.get("issuer") != entry.issuer:
                raise ValueError(f"discovery names issuer {doc.get('issuer')!r}, not {entry.issuer!r}")
            jwks_uri = doc.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("http://", "https://")):
                raise ValueError("discovery document has no http(s) jwks_uri")
            entry.jwks_uri = jwks_uri
        jwks = self._fetch(entry.jwks_uri, self.timeout)
        raw_keys = jwks.get("keys")
        if not isinstance(raw_keys, list):
            raise ValueError("JWKS has no keys list")
        keys: dict[str, Key] = {}
        for jwk in raw_keys:
            try:
                key = key_from_jwk(jwk)
            except (ValueError, TypeError) as exc:
                log.info("issuer %s: skipping a key: %s", entry.issuer, exc)
                continue
            keys[key.kid] = key
        return keys

    async def run(self) -> None:
        """Initial fetch, then refresh every interval (retrying sooner while an issuer has no keys)."""
        while True:
            await asyncio.gather(*(self.refresh(i) for i in self.issuers))
            delay = self.refresh_interval if self.all_loaded else min(self.refresh_interval, 2.0)
            await asyncio.sleep(delay)
