"""One decision: the pipeline's stages from anonymous routes to policy (the map: `__init__.py`).

An allowed decision carries the rate limits that apply (route and token, `ratelimit`);
the caller counts them before answering (→ 429 when over).

`Decider.decide` is synchronous and allocation-light. When a token names a `kid` the
key cache does not know, it returns `NeedKeys` and the caller refetches (rate-limited)
and decides again with `refetched=True`.

Verified tokens are cached by a SHA-256 digest of the token string (the token itself is
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
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

from .bearer import is_b64token
from .digests import sha256_digest
from .jwks import Key, KeyCache
from .jwt_fast import Parsed, TokenError, check_claims, parse, verify_signature
from .policy import Match, Policy
from .ratelimit import Limit, token_limit
from .reasons import Reason
from .revocations import RevocationSet
from .settings import ValidatorSettings

Headers = tuple[tuple[str, str], ...]

IDENTITY_HEADERS = (
    "x-auth-subject",
    "x-auth-owner",
    "x-auth-owner-name",
    "x-auth-owner-kind",
    "x-auth-token-id",
    "x-auth-roles",
    "x-auth-scopes",
    "x-auth-issuer",
)
_SAFE = frozenset(chr(c) for c in range(0x20, 0x7F)) - {"%", ","}
_NO_STORE = ("cache-control", "no-store")
_ALLOWED = Reason.ALLOWED
# A NamedTuple made on the cold path by tuple.__new__ with every field: its own __new__ is Python
# code, an interpreted call a tuple (docs/benchmarks.md, "The cold path, 2026-12-04").
_new = tuple.__new__
SHARED_SETS = 4096  # distinct role and scope sets kept to share among cached tokens (few in practice)
_UNAUTHORIZED = ((_NO_STORE), ("www-authenticate", 'Bearer realm="mltokens", error="invalid_token"'))
_NO_TOKEN = ((_NO_STORE), ("www-authenticate", 'Bearer realm="mltokens"'))
_FORBIDDEN = ((_NO_STORE), ("www-authenticate", 'Bearer realm="mltokens", error="insufficient_scope"'))
_UNAVAILABLE = ((_NO_STORE), ("retry-after", "5"))
ANONYMOUS_HEADERS: Headers = (_NO_STORE,) + tuple((h, "") for h in IDENTITY_HEADERS)


class Decision(NamedTuple):
    status: int
    reason: Reason
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
    # For RFC 7662 introspection (`Validator.introspection`): the rest of what the token says.
    owner: str = ""
    owner_name: str = ""
    audience: str | tuple[str, ...] = ()
    issued_at: int = 0
    expires_at: int = 0  # the effective expiry (the ML token's expiry claim included), without leeway
    client_id: str = ""


class _Verified:
    """A cache entry: the identity, its key in the cache, the revocation version it was last found
    clean at, and the decision for the route it last asked about (a token mostly calls one route)."""

    __slots__ = ("identity", "digest", "clean_at", "route", "decision")

    def __init__(self, identity: Identity, digest: bytes) -> None:
        self.identity = identity
        self.digest = digest
        self.clean_at = -1
        self.route: Match | None = None
        self.decision: Decision | None = None


def _header_value(value: str) -> str:
    """Percent-encoded UTF-8, with `%` and `,` always encoded (faster than urllib's quote: docs/benchmarks.md)."""
    if value.isascii() and value.isprintable() and "%" not in value and "," not in value:
        return value
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in value)


def _identity_headers(people: tuple[str, str, str, str, str], grants: Headers) -> Headers:
    """The identity headers (`IDENTITY_HEADERS`): `people` are (subject, owner, owner name, owner
    kind, token id); `grants` the roles', scopes' and issuer's (`_grant_headers`)."""
    plain = "".join(people)
    if plain.isascii() and plain.isprintable() and "%" not in plain and "," not in plain:
        # every value is its own encoding (`_header_value`): one check instead of one a value
        subject, owner, owner_name, owner_kind, token_id = people
    else:
        subject, owner, owner_name, owner_kind, token_id = map(_header_value, people)
    # written out, IDENTITY_HEADERS' order: a zip costs as much as the rest of this function
    return (
        _NO_STORE,
        ("x-auth-subject", subject),
        ("x-auth-owner", owner),
        ("x-auth-owner-name", owner_name),
        ("x-auth-owner-kind", owner_kind),
        ("x-auth-token-id", token_id),
        *grants,
    )


def _grant_headers(roles: frozenset[str], scopes: frozenset[str], issuer: str) -> Headers:
    """The last three identity headers: roles and scopes sorted and comma-joined, and the issuer."""
    return (
        ("x-auth-roles", ",".join(map(_header_value, sorted(roles)))),
        ("x-auth-scopes", ",".join(map(_header_value, sorted(scopes)))),
        ("x-auth-issuer", _header_value(issuer)),
    )


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TokenError(Reason.MALFORMED_CLAIM)
    for v in value:
        if not isinstance(v, str):
            raise TokenError(Reason.MALFORMED_CLAIM)
    return value


def _epoch(value: Any) -> int:
    """A time claim in whole epoch seconds: a finite JSON number, never a boolean."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise TokenError(Reason.MALFORMED_CLAIM)
    return int(value)


@cache
def deny(reason: Reason) -> Decision:
    """The refusal for `reason`, answered with its status and a generic header."""
    headers = {401: _UNAUTHORIZED, 403: _FORBIDDEN}.get(reason.status, _UNAVAILABLE)
    return Decision(reason.status, reason, headers)


MISSING_TOKEN = Decision(Reason.MISSING_TOKEN.status, Reason.MISSING_TOKEN, _NO_TOKEN)
ANONYMOUS = Decision(Reason.ANONYMOUS.status, Reason.ANONYMOUS, ANONYMOUS_HEADERS)


def _within(identity: Identity, now: float) -> bool:
    """Whether wall time `now` is inside a verified token's validity window (leeway included)."""
    return identity.not_before <= now < identity.expires


def _authorize(identity: Identity, match: Match | None) -> Decision:
    """What the policy's matching route (None: no route) grants this identity."""
    if match is None:
        return deny(Reason.NO_ROUTE)
    if not match.grants(identity.roles, identity.scopes):
        return deny(Reason.INSUFFICIENT_ROLE)
    limits = tuple(filter(None, (match.rule.limit, identity.limit)))
    # Counted per token id; a token without one (another issuer's) per its issuer and jti,
    # so no jti can name one of our token ids' buckets (token ids are UUIDs).
    key = (identity.token_id or f"{identity.issuer}#{identity.jti}") if limits else ""
    return _new(
        Decision, (_ALLOWED.status, _ALLOWED, identity.headers, identity.token_id, identity.subject, limits, key)
    )


class Decider:
    """The decision's stages; a cached token's warm path is written inline in `decide`."""

    def __init__(
        self,
        settings: ValidatorSettings,
        keys: KeyCache,
        revocations: RevocationSet,
        policy: Policy,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.revocations = revocations
        self.policy = policy
        self.algorithms = frozenset(settings.algorithms)
        self.audiences = frozenset(settings.audiences)
        self.leeway = settings.leeway
        self.max_staleness = settings.max_staleness
        self.token_issuers = frozenset(settings.token_issuers)
        self.prefix = settings.token_prefix
        self.refuse_unprefixed = settings.unprefixed_tokens == "refuse"
        self.wall = wall
        self.monotonic = monotonic
        # FIFO: an OrderedDict evicts its oldest entry in O(1), where a dict's first live entry is
        # found by scanning past the deleted ones (docs/benchmarks.md, "Evicting from a full cache")
        self.cache: OrderedDict[bytes, _Verified] = OrderedDict()
        self.cache_size = settings.cache_size
        self.shared_sets: dict[frozenset[str], frozenset[str]] = {}
        self.grants: dict[tuple[frozenset[str], frozenset[str], str], Headers] = {}
        # The cached token of the last decision that reached its route (the lean server sets None before
        # each): the lean server remembers an allowed one's answer and asks `current` before giving it again.
        self.last: _Verified | None = None

    def clear_cache(self) -> None:
        self.cache.clear()

    def decide(self, method: str, path: str, token: str | None, refetched: bool = False) -> Decision | NeedKeys:
        """Decide on a canonical (method, path) and the bearer token (None when absent).

        The stages run in the pipeline's order: the route's here, the token's in `_token`
        (shared with `introspect`); a cached token's path is written out there rather than
        called stage by stage (docs/benchmarks.md, "The decision as the pipeline").
        """
        # policy: the route, looked up first because anonymous routes need no token
        match = self.policy.match(method, path)
        # anonymous routes
        if match is not None and match.rule.anonymous:
            return ANONYMOUS
        verified = self._token(token, refetched)
        if not isinstance(verified, _Verified):
            return verified
        # policy: what the route grants, decided once per route a token asks about
        if verified.route is not match or verified.decision is None:
            verified.route, verified.decision = match, _authorize(verified.identity, match)
        self.last = verified
        return verified.decision  # limits, the answer, usage and metrics: app.py

    def current(self, verified: _Verified, now: float, at: float) -> bool:
        """Whether `decide` would take `verified` as it stands at wall time `now` and monotonic time
        `at` (`wall()`, `monotonic()`: the caller's, read once), so that its decision for a route stands
        too: revocations fresh, the token still cached and inside its validity window, and found not
        revoked at the set's current version. Otherwise `decide` is asked again."""
        if self._stale(at):
            return False
        if self.cache.get(verified.digest) is not verified:
            return False  # evicted or cleared (keys withdrawn): verified again
        return _within(verified.identity, now) and verified.clean_at == self._version(now)

    def introspect(self, token: str, refetched: bool = False) -> Identity | Decision | NeedKeys:
        """RFC 7662: what a token grants, by the stages of `decide` that need no route (freshness,
        cache, signature and claims, revocation); a refusal is a `Decision`, as there."""
        verified = self._token(token, refetched)
        return verified.identity if isinstance(verified, _Verified) else verified

    def _token(self, token: str | None, refetched: bool) -> _Verified | Decision | NeedKeys:
        """The token's stages, whatever route it asks for: freshness, bearer, cache, signature
        and claims (`_verify`, for a token not cached), revocation."""
        # freshness: no decision on revocation data older than max_staleness
        if self._stale(self.monotonic()):
            return deny(Reason.REVOCATIONS_STALE)
        # bearer: app.py has parsed the header; no header, no token
        if token is None:
            return MISSING_TOKEN
        # cache: a token verified before and still inside its validity window (no cache, no key to look up)
        now = self.wall()
        # SHA-256 (OpenSSL, SHA extensions): half the time of BLAKE2b-256 on a token (docs/benchmarks.md)
        digest = sha256_digest(token.encode()) if self.cache_size else b""
        verified = self.cache.get(digest)
        if verified is None or not _within(verified.identity, now):
            # signature and claims (jwt_fast, jwks)
            verified = self._verify(token, digest, now, refetched)
            if not isinstance(verified, _Verified):
                return verified
        # revocation: looked up again whenever the set's version moved
        version = self._version(now)
        if verified.clean_at != version:
            if self.revocations.any_revoked(verified.identity.revocation_keys):
                return deny(Reason.REVOKED)
            verified.clean_at = version
        return verified

    def _stale(self, at: float) -> bool:
        """Whether the revocation data is missing or, at monotonic time `at`, older than max_staleness
        (no decision on it)."""
        revocations = self.revocations
        return not revocations.loaded or at - revocations.confirmed_at > self.max_staleness

    def _version(self, now: float) -> int:
        """The revocation set's version at wall time `now`, pending entries due by then included."""
        revocations = self.revocations
        return revocations.version if now < revocations.next_due else revocations.version_at(now)

    def _verify(self, token: str, digest: bytes, now: float, refetched: bool) -> _Verified | Decision | NeedKeys:
        """The cold path: a token not in the cache is verified and remembered.

        A token that parses as a JWS is an RFC 6750 b64token (its characters are a subset),
        so the b64token check runs only to name a refusal (`malformed_header`)."""
        try:
            result = self._authenticate(token, now, refetched)
        except TokenError as exc:
            return deny(exc.reason if is_b64token(token) else Reason.MALFORMED_HEADER)
        if not isinstance(result, Identity):
            return result
        verified = _Verified(result, digest)
        self._remember(digest, verified)
        return verified

    def _remember(self, digest: bytes, verified: _Verified) -> None:
        """Cache a verified token, evicting the oldest entry when full."""
        if self.cache_size:
            if len(self.cache) >= self.cache_size:
                self.cache.popitem(last=False)
            self.cache[digest] = verified

    def _authenticate(self, token: str, now: float, refetched: bool) -> Identity | Decision | NeedKeys:
        """Signature and claims: take off the prefix, parse, find the issuer's key, verify, check claims,
        read the identity. (The cache keys a token as sent, prefix and all, so a cached token never
        comes here again.)"""
        prefix = self.prefix
        prefixed = bool(prefix) and token.startswith(prefix)
        parsed = parse(token[len(prefix) :] if prefixed else token, self.algorithms)
        claims = parsed.claims
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in self.keys.issuers:
            raise TokenError(Reason.UNKNOWN_ISSUER)
        key = self._key(issuer, parsed, refetched)
        if not isinstance(key, Key):
            return key
        if not verify_signature(parsed.alg, key.key, parsed.signing_input, parsed.signature):
            raise TokenError(Reason.BAD_SIGNATURE)
        check_claims(claims, issuer, self.audiences, now, self.leeway)
        if not prefixed and self.refuse_unprefixed and self._handed_out(claims, issuer):
            raise TokenError(Reason.UNPREFIXED)
        try:
            identity = self._identity(claims, issuer)
        except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800") has no UTF-8: no header value, no digest
            raise TokenError(Reason.MALFORMED_CLAIM) from None
        if identity.expires <= now:  # past the ML token's expiry (its expiry claim), whatever `exp` says
            raise TokenError(Reason.EXPIRED)
        return identity

    def _handed_out(self, claims: dict[str, Any], issuer: str) -> bool:
        """A token our lifecycle handed out (with the prefix since it exists): one of `token_issuers`',
        not a JWT fetched from Keycloak with a client-credentials token's id and secret."""
        return issuer in self.token_issuers and claims.get(self.settings.credential_claim) is None

    def _key(self, issuer: str, parsed: Parsed, refetched: bool) -> Key | Decision | NeedKeys:
        """The issuer's key for the token's `kid`; NeedKeys to refetch an unknown one once."""
        key = self.keys.get(issuer, parsed.kid)
        if key is None:
            if not self.keys.issuers[issuer].loaded:
                return deny(Reason.KEYS_UNAVAILABLE)
            if not refetched:
                return NeedKeys(issuer)
            raise TokenError(Reason.UNKNOWN_KID)
        if key.alg is not None and key.alg != parsed.alg:
            raise TokenError(Reason.KEY_ALGORITHM_MISMATCH)
        return key

    def _identity(self, claims: dict[str, Any], issuer: str) -> Identity:
        """What the verified claims grant; malformed claims are refused (`malformed_claim`)."""
        roles = self._roles(claims)
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise TokenError(Reason.MALFORMED_CLAIM)
        scopes = frozenset(scope.split())
        # one set object for all cached tokens with equal roles (scopes): a set is an object the
        # cyclic collector traverses, two a cached token when each has its own (docs/benchmarks.md,
        # "Fewer objects a cached token"); past SHARED_SETS distinct sets, new ones are not kept
        shared = self.shared_sets
        if len(shared) <= SHARED_SETS - 2:  # a token may add two: the bound holds
            roles, scopes = shared.setdefault(roles, roles), shared.setdefault(scopes, scopes)
        else:
            roles, scopes = shared.get(roles, roles), shared.get(scopes, scopes)
        token_id, owner, owner_name, owner_kind, credential, expires = self._ownership(claims, issuer)
        client_id = token_id or claims.get("client_id", claims.get("azp"))
        audience = claims["aud"]
        try:
            limit = token_limit(claims.get(self.settings.limits_claim))
        except ValueError:
            raise TokenError(Reason.MALFORMED_CLAIM) from None
        nbf = max(int(claims.get("nbf", 0)), int(claims["iat"]))
        return _new(
            Identity,
            (
                issuer,
                claims["sub"],
                claims["jti"],
                token_id,
                roles,
                scopes,
                nbf - self.leeway,
                expires + self.leeway,
                _identity_headers(
                    (claims["sub"], owner, owner_name, owner_kind, token_id or ""), self._grants(roles, scopes, issuer)
                ),
                self.revocations.keys(claims["jti"], token_id, credential),
                limit,
                owner,
                owner_name,
                audience if isinstance(audience, str) else tuple(audience),
                int(claims["iat"]),
                expires,
                client_id if isinstance(client_id, str) else claims["sub"],
            ),
        )

    def _grants(self, roles: frozenset[str], scopes: frozenset[str], issuer: str) -> Headers:
        """`_grant_headers`, made once for each of the first SHARED_SETS (roles, scopes, issuer)."""
        key = (roles, scopes, issuer)
        grants = self.grants.get(key)
        if grants is None:
            grants = _grant_headers(roles, scopes, issuer)
            if len(self.grants) < SHARED_SETS:
                self.grants[key] = grants
        return grants

    def _roles(self, claims: dict[str, Any]) -> frozenset[str]:
        """The roles claim, plus Keycloak's `realm_access.roles`."""
        roles = set(_strings(claims.get(self.settings.roles_claim)))
        realm_access = claims.get("realm_access")
        if isinstance(realm_access, dict):
            roles.update(_strings(realm_access.get("roles")))
        return frozenset(roles)

    def _ownership(self, claims: dict[str, Any], issuer: str) -> tuple[str | None, str, str, str, str | None, int]:
        """(token id, owner, owner name, owner kind, credential id, expiry) of the token.

        Only the `token_issuers`' claims name our tokens, their owners, credentials and
        expiry; another issuer's token is its subject's, of no known kind, until its `exp`.
        Our tokens minted before owner kinds existed have no kind claim: they are users'.
        """
        settings = self.settings
        expires = int(claims["exp"])
        if issuer in self.token_issuers:
            token_id = claims.get(settings.token_id_claim)
            owner = claims.get(settings.owner_claim, claims["sub"])
            owner_name = claims.get(settings.owner_name_claim, owner)
            owner_kind = claims.get(settings.owner_kind_claim, "user")
            credential = claims.get(settings.credential_claim)
            token_expiry = claims.get(settings.token_expiry_claim)
            if token_expiry is not None:
                expires = min(expires, _epoch(token_expiry))
        else:
            token_id = credential = None
            owner = owner_name = claims["sub"]
            owner_kind = ""
        # written out: a generator in all() costs more than the rest of this function
        if not (
            isinstance(owner, str)
            and isinstance(owner_name, str)
            and isinstance(owner_kind, str)
            and (token_id is None or isinstance(token_id, str))
            and (credential is None or isinstance(credential, str))
        ):
            raise TokenError(Reason.MALFORMED_CLAIM)
        return token_id, owner, owner_name, owner_kind, credential, expires
