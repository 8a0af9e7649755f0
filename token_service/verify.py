"""Reference verification of a token: signature, claims and revocation, with reasons.

This is the slow, obviously-correct path built on PyJWT. `mltokens check` uses it,
and the validator's fast path is tested against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt

from .config import ALGORITHMS, Settings
from .store import Store
from .token_format import split_prefix


@dataclass
class Verdict:
    valid: bool
    reason: str
    claims: dict[str, Any] = field(default_factory=dict)
    steps: list[tuple[str, bool, str]] = field(default_factory=list)

    def step(self, name: str, ok: bool, detail: str) -> bool:
        self.steps.append((name, ok, detail))
        if not ok:
            self.valid, self.reason = False, detail
        return ok


def _time(value: Any) -> float:
    """A NumericDate claim: a JSON number a float holds (not a boolean, string, null, NaN or Infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(value)
    number = float(value)  # OverflowError for an integer beyond a float's range
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _when(timestamp: float) -> str:
    try:
        return datetime.fromtimestamp(timestamp, UTC).isoformat()
    except (OverflowError, ValueError, OSError):  # beyond the years datetime can show
        return f"{timestamp:.0f} seconds after 1970"


def _lifetime(claims: dict[str, Any], now: float, leeway: float, expiry_claim: str) -> tuple[bool, str]:
    """`exp`, `iat`, `nbf` and the ML token's expiry claim (client-credentials JWTs), with leeway."""
    try:
        exp, iat = _time(claims["exp"]), _time(claims["iat"])
        nbf = _time(claims["nbf"]) if "nbf" in claims else iat
    except (ValueError, OverflowError):
        return False, "exp, iat and nbf must be numbers"
    token_expiry = claims.get(expiry_claim)
    if token_expiry is not None:
        try:
            exp = min(exp, _time(token_expiry))
        except (ValueError, OverflowError):
            return False, f"{expiry_claim} must be a number"
    if exp <= now - leeway:
        return False, f"expired at {_when(exp)}"
    if max(iat, nbf) > now + leeway:
        return False, "not yet valid (iat or nbf in the future)"
    return True, f"valid until {_when(exp)}"


def verify(
    token: str,
    settings: Settings,
    jwks: dict[str, Any],
    store: Store | None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    issuer_url: str | None = None,
) -> Verdict:
    """Check a token (as handed out, with the prefix, or the bare JWT) step by step and say which step
    fails, if any."""
    verdict = Verdict(valid=True, reason="valid")
    token, _prefixed = split_prefix(token, settings.token_prefix)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError as exc:
        verdict.step("format", False, f"not a JWT: {exc}")
        return verdict
    alg, kid = header.get("alg"), header.get("kid")
    if not verdict.step(
        "algorithm", alg in ALGORITHMS, f"algorithm {alg!r}" + ("" if alg in ALGORITHMS else " is not allowed")
    ):
        return verdict
    keys = {k.get("kid"): k for k in jwks.get("keys", [])}
    known = isinstance(kid, str) and kid in keys  # a JSON list or object is no key id (nor hashable)
    if not verdict.step("key", known, f"key {kid!r}" + (" found" if known else " is not published")):
        return verdict
    try:
        key = jwt.PyJWK(keys[kid], algorithm=alg)
        claims = jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            audience=settings.audience,
            issuer=issuer_url or settings.issuer_url,
            # Times are checked below against `now`, so a caller's clock governs them.
            options={
                "require": ["exp", "iat", "iss", "aud", "sub", "jti"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.PyJWTError as exc:  # InvalidKeyError too: an `alg` that does not fit the key of `kid`
        verdict.step("signature and claims", False, f"{type(exc).__name__}: {exc}")
        return verdict
    verdict.claims = claims
    if not verdict.step(
        "signature and claims",
        bool(claims["sub"] and claims["jti"]),
        "signature, iss and aud check out" if claims["sub"] and claims["jti"] else "sub and jti must not be empty",
    ):
        return verdict
    if not verdict.step(
        "lifetime", *_lifetime(claims, now().timestamp(), settings.leeway.total_seconds(), settings.token_expiry_claim)
    ):
        return verdict
    token_id = claims.get(settings.token_id_claim)
    if store is not None:
        credential = claims.get(settings.credential_claim)
        revocation = store.revocation_for(
            claims["jti"], token_id, now(), credential if isinstance(credential, str) else None
        )
        if revocation is not None:
            detail = f"revoked at {revocation.effective_at.isoformat()} by {revocation.actor}"
            if revocation.reason:
                detail += f" ({revocation.reason})"
            verdict.step("revocation", False, detail)
            return verdict
        verdict.step("revocation", True, "not revoked")
    return verdict
