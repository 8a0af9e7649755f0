"""One decision: authenticate (bearer, signature, claims, revocation) → authorize (policy).

An allowed decision carries the rate limits that apply (route and token, `ratelimit`);
the caller counts them before answering (→ 429 when over).

`Decider.decide` is synchronous and allocation-light. When a token names a `kid` the
key cache does not know, it returns `NeedKeys` and the caller refetches (rate-limited)
and decides again with `refetched=True`.

Verified tokens are cached by a BLAKE2b-256 digest of the token string (the token itself is
never kept) until their `exp`, and cleared whenever an issuer withdraws a key. Revocation
and policy apply to every request, cached or not: a cached token remembers the
revocation set's version at which it was last found not revoked, and is looked up
again whenever that version has changed; it also remembers the decision for the policy
route it last asked about (the policy never changes while the process runs). Reasons
are for logs and metrics; clients only see the status and a generic `WWW-Authenticate`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from hashlib import blake2b
from typing import Any, NamedTuple

from .bearer import is_b64token
from .jwks import KeyCache
from .jwt_fast import TokenError, check_claims, parse, verify_signature
from .policy import Match, Policy
from .ratelimit import Limit, token_limit
from .revocations import RevocationSet
from .settings import ValidatorSettings

Headers = tuple[tuple[str, str], ...]

IDENTITY_HEADERS = (
    "x-auth-subject", "x-auth-owner", "x-auth-owner-name", "x-auth-token-id",
    "x-auth-roles", "x-auth-scopes", "x-auth-issuer",
)
_SAFE = frozenset(chr(c) for c in range(0x20, 0x7F)) - {"%", ","}
_NO_STORE = ("cache-control", "no-store")
_UNAUTHORIZED = ((_NO_STORE), ("www-authenticate", 'Bearer realm="mltokens", error="invalid_token"'))
_NO_TOKEN = ((_NO_STORE), ("www-authenticate", 'Bearer realm="mltokens"'))
_FORBIDDEN = ((_NO_STORE), ("www-authenticate", 'Bearer realm="mltokens", error="insufficient_scope"'))
_UNAVAILABLE = ((_NO_STORE), ("retry-after", "5"))
ANONYMOUS_HEADERS: Headers = (_NO_STORE,) + tuple((h, "") for h in IDENTITY_HEADERS)


class Decision(NamedTuple):
    status: int
    reason: str
    headers: Headers
    token_id: str | None = None
    subject: str | None = None
    limits: tuple[Limit, ...] = ()
    limit_key: str = ""


@dataclass(frozen=True, slots=True)
class NeedKeys:
    """The token's `kid` is unknown for this issuer: refetch its keys, then decide again."""

    issuer: str


class Identity(NamedTuple):
    """What a verified token grants; cached until its expiry."""

    issuer: str
    subject: str
    jti: str
    token_id: str | None
    roles: frozenset[str]
    scopes: frozenset[str]
    not_before: float
    expires: float
    headers: Headers
    revocation_keys: tuple[int, ...]
    limit: Limit | None = None


class _Verified:
    """A cache entry: the identity, the revocation version it was last found clean at, and
    the decision for the route it last asked about (a token mostly calls one route)."""

    __slots__ = ("identity", "clean_at", "route", "decision")

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.clean_at = -1
        self.route: Match | None = None
        self.decision: Decision | None = None


def _header_value(value: str) -> str:
    """Percent-encoded UTF-8, with `%` and `,` always encoded (urllib's quote is ~100x slower)."""
    if value.isascii() and value.isprintable() and "%" not in value and "," not in value:
        return value
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in value)


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TokenError("malformed_claim")
    return value


def _epoch(value: Any) -> int:
    """A time claim in whole epoch seconds: a finite JSON number, never a boolean."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        raise TokenError("malformed_claim")
    return int(value)


@cache
def deny(status: int, reason: str) -> Decision:
    headers = {401: _UNAUTHORIZED, 403: _FORBIDDEN}.get(status, _UNAVAILABLE)
    return Decision(status, reason, headers)


MISSING_TOKEN = Decision(401, "missing_token", _NO_TOKEN)
ANONYMOUS = Decision(200, "anonymous", ANONYMOUS_HEADERS)


def _authorize(identity: Identity, match: Match | None) -> Decision:
    """What the policy's matching route (None: no route) grants this identity."""
    if match is None:
        return deny(403, "no_route")
    if not match.grants(identity.roles, identity.scopes):
        return deny(403, "insufficient_role")
    limits = tuple(x for x in (match.rule.limit, identity.limit) if x is not None)
    # Counted per token id; a token without one (another issuer's) per its issuer and jti,
    # so no jti can name one of our token ids' buckets (token ids are UUIDs).
    key = identity.token_id or f"{identity.issuer}#{identity.jti}"
    return Decision(200, "allowed", identity.headers, identity.token_id, identity.subject, limits,
                    key if limits else "")


class Decider:
    def __init__(
        self,
        settings: ValidatorSettings,
        keys: KeyCache,
        revocations: RevocationSet,
        policy: Policy,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s = settings
        self.keys = keys
        self.revocations = revocations
        self.policy = policy
        self.algorithms = frozenset(settings.algorithms)
        self.audiences = frozenset(settings.audiences)
        self.leeway = settings.leeway
        self.token_issuers = frozenset(settings.token_issuers)
        self.wall = wall
        self.monotonic = monotonic
        self.cache: dict[bytes, _Verified] = {}
        self.cache_size = settings.cache_size

    def clear_cache(self) -> None:
        self.cache.clear()

    def decide(self, method: str, path: str, token: str | None, refetched: bool = False) -> Decision | NeedKeys:
        """Decide on a canonical (method, path) and the bearer token (None when absent)."""
        match = self.policy.match(method, path)
        if match is not None and match.rule.anonymous:
            return ANONYMOUS
        revocations = self.revocations
        if not revocations.loaded or self.monotonic() - revocations.confirmed_at > self.s.max_staleness:
            return deny(503, "revocations_stale")
        if token is None:
            return MISSING_TOKEN
        now = self.wall()
        digest = blake2b(token.encode(), digest_size=32).digest()
        verified = self.cache.get(digest)
        if verified is None or not (verified.identity.not_before <= now < verified.identity.expires):
            if not is_b64token(token):
                return deny(401, "malformed_header")
            try:
                result = self._authenticate(token, now, refetched)
            except TokenError as exc:
                return deny(401, exc.reason)
            if not isinstance(result, Identity):
                return result
            verified = _Verified(result)
            if self.cache_size:
                if len(self.cache) >= self.cache_size:
                    self.cache.pop(next(iter(self.cache)))
                self.cache[digest] = verified
        version = revocations.version if now < revocations.next_due else revocations.version_at(now)
        if verified.clean_at != version:
            if revocations.any_revoked(verified.identity.revocation_keys):
                return deny(401, "revoked")
            verified.clean_at = version
        if verified.route is not match or verified.decision is None:
            verified.route, verified.decision = match, _authorize(verified.identity, match)
        return verified.decision

    def _authenticate(self, token: str, now: float, refetched: bool) -> Identity | Decision | NeedKeys:
        parsed = parse(token, self.algorithms)
        claims = parsed.claims
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in self.keys.issuers:
            raise TokenError("unknown_issuer")
        key = self.keys.get(issuer, parsed.kid)
        if key is None:
            if not self.keys.issuers[issuer].loaded:
                return deny(503, "keys_unavailable")
            if not refetched:
                return NeedKeys(issuer)
            raise TokenError("unknown_kid")
        if key.alg is not None and key.alg != parsed.alg:
            raise TokenError("key_algorithm_mismatch")
        if not verify_signature(parsed.alg, key.key, parsed.signing_input, parsed.signature):
            raise TokenError("bad_signature")
        check_claims(claims, issuer, self.audiences, now, self.leeway)
        identity = self._identity(claims, issuer)
        if identity.expires <= now:  # past the ML token's expiry (its expiry claim), whatever `exp` says
            raise TokenError("expired")
        return identity

    def _identity(self, claims: dict[str, Any], issuer: str) -> Identity:
        s = self.s
        roles = set(_strings(claims.get(s.roles_claim)))
        realm_access = claims.get("realm_access")
        if isinstance(realm_access, dict):
            roles.update(_strings(realm_access.get("roles")))
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise TokenError("malformed_claim")
        expires = int(claims["exp"])
        if issuer in self.token_issuers:
            token_id = claims.get(s.token_id_claim)
            owner = claims.get(s.owner_claim, claims["sub"])
            owner_name = claims.get(s.owner_name_claim, owner)
            credential = claims.get(s.credential_claim)
            token_expiry = claims.get(s.token_expiry_claim)
            if token_expiry is not None:
                expires = min(expires, _epoch(token_expiry))
        else:  # another issuer's claims cannot name our tokens, their owners or credentials
            token_id = credential = None
            owner = owner_name = claims["sub"]
        if not all(isinstance(v, str) for v in (owner, owner_name)) or not all(
            v is None or isinstance(v, str) for v in (token_id, credential)
        ):
            raise TokenError("malformed_claim")
        scopes = frozenset(scope.split())
        try:
            limit = token_limit(claims.get(s.limits_claim))
        except ValueError:
            raise TokenError("malformed_claim") from None
        leeway = self.leeway
        nbf = max(int(claims.get("nbf", 0)), int(claims["iat"]))
        headers: Headers = (_NO_STORE,) + tuple(zip(IDENTITY_HEADERS, (
            _header_value(claims["sub"]), _header_value(owner), _header_value(owner_name),
            _header_value(token_id or ""), ",".join(_header_value(r) for r in sorted(roles)),
            ",".join(_header_value(x) for x in sorted(scopes)), _header_value(issuer),
        ), strict=True))
        return Identity(issuer, claims["sub"], claims["jti"], token_id, frozenset(roles), scopes,
                        nbf - leeway, expires + leeway, headers,
                        self.revocations.keys(claims["jti"], token_id, credential), limit)
