"""Local-issuer key pairs: generation, rotation, encrypted storage and the JWKS.

Private keys are stored PKCS#8-encrypted with the configured passphrase in their own
table; the tokens table holds none of them, and none is ever logged or printed.
A rotated-out key stays in the JWKS until every token it signed has expired
(retired_at + the maximum token lifetime).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import select

from ..errors import ConfigError, IssuerUnavailable
from ..store import SigningKey, Store

RSA_BITS = 2048


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    algorithm: str
    created_at: datetime
    retired_at: datetime | None
    expires_at: datetime | None

    def state(self, now: datetime) -> str:
        if self.retired_at is None:
            return "current"
        if self.expires_at and self.expires_at <= now:
            return "expired"
        return "retired"


def _thumbprint(public_jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint: a kid that names the key itself."""
    canonical = json.dumps({k: public_jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


class KeyRing:
    def __init__(self, store: Store, passphrase: str, algorithm: str, max_ttl: timedelta) -> None:
        self.store = store
        self._passphrase = passphrase.encode()
        self.algorithm = algorithm
        self.max_ttl = max_ttl
        self._cache: dict[str, rsa.RSAPrivateKey] = {}
        self.generation = 0  # bumped by every change made through this ring (a JWKS cache starts over)

    def rotate(self, now: datetime) -> KeyInfo:
        """Make a new current key; the previous one keeps verifying until its tokens expire."""
        if not self._passphrase:
            raise ConfigError("key_passphrase: required to create signing keys (MLTOKENS_KEY_PASSPHRASE)")
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        full = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
        kid = _thumbprint(full)
        # RFC 7517 advises against `key_ops` beside `use`; publish what Keycloak publishes.
        public_jwk = {"kty": "RSA", "n": full["n"], "e": full["e"], "kid": kid, "alg": self.algorithm, "use": "sig"}
        encrypted = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self._passphrase),
        )
        with self.store.transaction() as session:
            for old in session.scalars(select(SigningKey).where(SigningKey.retired_at.is_(None)).with_for_update()):
                old.retired_at = now
                old.expires_at = now + self.max_ttl
            row = SigningKey(
                kid=kid, algorithm=self.algorithm, public_jwk=public_jwk, private_key=encrypted, created_at=now
            )
            session.add(row)
        self.generation += 1
        return KeyInfo(kid, self.algorithm, now, None, None)

    def list(self) -> list[KeyInfo]:
        with self.store.transaction() as session:
            rows = session.scalars(select(SigningKey).order_by(SigningKey.created_at.desc())).all()
            return [KeyInfo(r.kid, r.algorithm, r.created_at, r.retired_at, r.expires_at) for r in rows]

    def jwks(self, now: datetime) -> dict[str, Any]:
        """Current and retired-but-unexpired public keys."""
        with self.store.transaction() as session:
            rows = session.scalars(select(SigningKey).order_by(SigningKey.created_at.desc())).all()
            return {"keys": [r.public_jwk for r in rows if r.expires_at is None or r.expires_at > now]}

    def signing_key(self) -> tuple[str, rsa.RSAPrivateKey]:
        """The current key (kid, private key), decrypted once per process and kept in memory."""
        with self.store.transaction() as session:
            row = session.scalars(select(SigningKey).where(SigningKey.retired_at.is_(None))).first()
            if row is None:
                raise IssuerUnavailable("The local issuer has no signing key yet; run `mltokens keys rotate`.")
            if row.kid not in self._cache:
                self._cache[row.kid] = self._decrypt(row.private_key)
            return row.kid, self._cache[row.kid]

    def prune(self, now: datetime) -> int:
        """Delete keys whose every token has expired."""
        with self.store.transaction() as session:
            rows = session.scalars(select(SigningKey).where(SigningKey.expires_at <= now)).all()
            for row in rows:
                self._cache.pop(row.kid, None)
                session.delete(row)
        self.generation += 1
        return len(rows)

    def _decrypt(self, blob: bytes) -> rsa.RSAPrivateKey:
        if not self._passphrase:
            raise ConfigError("key_passphrase: required to sign tokens (MLTOKENS_KEY_PASSPHRASE)")
        try:
            key = serialization.load_pem_private_key(blob, password=self._passphrase)
        except (ValueError, TypeError):
            raise ConfigError("key_passphrase: does not decrypt the stored signing key") from None
        assert isinstance(key, rsa.RSAPrivateKey)
        return key
