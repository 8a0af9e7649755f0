"""Reference verification of a token: signature, claims and revocation, with reasons.

This is the slow, obviously-correct path built on PyJWT. `mltokens check` uses it,
and the validator's fast path is tested against it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt

from .config import Settings
from .store import Store

ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")


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


def _lifetime(claims: dict[str, Any], now: float, leeway: float) -> tuple[bool, str]:
    try:
        exp, iat, nbf = float(claims["exp"]), float(claims["iat"]), float(claims.get("nbf", claims["iat"]))
    except (TypeError, ValueError):
        return False, "exp, iat and nbf must be numbers"
    if exp <= now - leeway:
        return False, f"expired at {datetime.fromtimestamp(exp, UTC).isoformat()}"
    if max(iat, nbf) > now + leeway:
        return False, "not yet valid (iat or nbf in the future)"
    return True, f"valid until {datetime.fromtimestamp(exp, UTC).isoformat()}"


def verify(
    token: str,
    settings: Settings,
    jwks: dict[str, Any],
    store: Store | None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    issuer_url: str | None = None,
) -> Verdict:
    """Check a token step by step and say which step fails, if any."""
    verdict = Verdict(valid=True, reason="valid")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError as exc:
        verdict.step("format", False, f"not a JWT: {exc}")
        return verdict
    alg, kid = header.get("alg"), header.get("kid")
    if not verdict.step("algorithm", alg in ALLOWED_ALGORITHMS, f"algorithm {alg!r}" + (
        "" if alg in ALLOWED_ALGORITHMS else " is not allowed"
    )):
        return verdict
    keys = {k.get("kid"): k for k in jwks.get("keys", [])}
    if not verdict.step("key", kid in keys, f"key {kid!r}" + (" found" if kid in keys else " is not published")):
        return verdict
    try:
        key = jwt.PyJWK(keys[kid], algorithm=alg)
        claims = jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            audience=settings.audience,
            issuer=issuer_url or settings.issuer_url.rstrip("/"),
            # Times are checked below against `now`, so a caller's clock governs them.
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"], "verify_exp": False,
                     "verify_iat": False, "verify_nbf": False},
        )
    except jwt.InvalidTokenError as exc:
        verdict.step("signature and claims", False, f"{type(exc).__name__}: {exc}")
        return verdict
    verdict.claims = claims
    verdict.step("signature and claims", True, "signature, iss and aud check out")
    if not verdict.step("lifetime", *_lifetime(claims, now().timestamp(), settings.leeway.total_seconds())):
        return verdict
    token_id = claims.get(settings.token_id_claim)
    if store is not None:
        revocation = store.revocation_for(claims["jti"], token_id, now())
        if revocation is not None:
            detail = f"revoked at {revocation.effective_at.isoformat()} by {revocation.actor}"
            if revocation.reason:
                detail += f" ({revocation.reason})"
            verdict.step("revocation", False, detail)
            return verdict
        verdict.step("revocation", True, "not revoked")
    return verdict
