"""Leak reporting: whoever finds a token string may have it revoked (docs/security.md, "Leaked tokens").

`LeakReports.report` takes a string someone found, and if it is a token of ours that
still works, revokes it (`Lifecycle.revoke_reported`) with where it was found. It never
says which: the CKAN plugin's endpoints (RFC 7009 revocation, the secret scanners' bulk
report) answer the same for any string.

The signature is checked against the issuer's published keys, cached for `KEYS_TTL`
(and fetched again at most every `KEYS_REFETCH` for a key id not among them), so a
report costs the issuer (Keycloak) at most one key fetch per interval, not one per string.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from .errors import InvalidInput
from .lifecycle import Actor, Lifecycle, check_text
from .token_format import split_prefix
from .verify import verify

KEYS_TTL = 300.0
KEYS_REFETCH = 30.0
MAX_TOKEN = 8192
FIELDS = {"type": 100, "url": 2000, "source": 200}
"""What a report may say about where a token was found, and the longest each may be."""
ACTOR = Actor(id="leak-report", name="leak report", is_admin=True, source="leak report")


@dataclass(frozen=True)
class Found:
    """One reported string and where it was found (strings as a scanner sent them, checked)."""

    token: str
    where: dict[str, str]

    @classmethod
    def of(cls, item: Any, reporter: str) -> Found:
        """A report item `{"token": ..., "type": ..., "url": ..., "source": ...}` (only token required);
        InvalidInput names the first field that is wrong."""
        if not isinstance(item, dict):
            raise InvalidInput("Each item must be an object with a token.", field="token")
        token = item.get("token")
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN or not token.isascii():
            raise InvalidInput(f"token: a string of at most {MAX_TOKEN} ASCII characters.", field="token")
        where = {"reporter": reporter}
        for name, limit in FIELDS.items():
            value = item.get(name)
            if value is not None and value != "":
                where[name] = check_text(value, name, name, limit)
        return cls(token, where)


class _Keys:
    """The issuer's JWKS, cached; thread-safe (CKAN serves requests on threads)."""

    def __init__(self, fetch: Callable[[], dict[str, Any]], clock: Callable[[], float]) -> None:
        self.fetch = fetch
        self.clock = clock
        self.lock = threading.Lock()
        self.jwks: dict[str, Any] = {"keys": []}
        self.fetched_at = -KEYS_TTL

    def get(self, kid: Any) -> dict[str, Any]:
        with self.lock:
            age = self.clock() - self.fetched_at
            known = any(k.get("kid") == kid for k in self.jwks.get("keys", []))
            if age >= KEYS_TTL or (not known and age >= KEYS_REFETCH):
                self.jwks, self.fetched_at = self.fetch(), self.clock()
            return self.jwks


class LeakReports:
    def __init__(self, lifecycle: Lifecycle, clock: Callable[[], float] = time.monotonic) -> None:
        self.lifecycle = lifecycle
        self.keys = _Keys(lifecycle.issuer.jwks, clock)

    def report(self, found: Found) -> bool:
        """Revoke `found.token` if it is one of ours and still works; True if it was (never tell the reporter)."""
        settings = self.lifecycle.settings
        try:
            kid = jwt.get_unverified_header(split_prefix(found.token, settings.token_prefix)[0]).get("kid")
        except jwt.InvalidTokenError:
            return False
        verdict = verify(
            found.token,
            settings,
            self.keys.get(kid),
            self.lifecycle.store,
            now=self.lifecycle.clock,
            issuer_url=self.lifecycle.issuer.issuer_url,
        )
        if not verdict.valid:
            return False
        claims = verdict.claims
        credential = claims.get(settings.credential_claim)
        return self.lifecycle.revoke_reported(
            claims.get(settings.token_id_claim), credential or claims["jti"], found.where, ACTOR
        )
