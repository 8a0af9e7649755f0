"""A realm's keys and JWT signing, as Keycloak's default key providers do it.

Each realm gets an ``rsa-generated`` RS256 signing key, an ``rsa-enc-generated``
RSA-OAEP encryption key (both published in the JWKS with a self-signed ``x5c``
certificate, as Keycloak does) and an ``hmac-generated`` HS512 secret for refresh
tokens.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import secrets
import uuid
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class _RsaKey:
    """An RSA key pair with its self-signed certificate and JWK."""

    def __init__(self, realm: str, alg: str, use: str) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.alg = alg
        self.use = use
        self.kid = _b64url(hashlib.sha256(uuid.uuid4().bytes).digest())[:43]
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, realm)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(self.private_key, hashes.SHA256())
        )

    def jwk(self) -> dict[str, Any]:
        numbers = self.private_key.public_key().public_numbers()
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return {
            "kid": self.kid,
            "kty": "RSA",
            "alg": self.alg,
            "use": self.use,
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
            "x5c": [base64.b64encode(der).decode()],
            "x5t": _b64url(hashlib.sha1(der).digest()),  # noqa: S324 - JWK thumbprint format
            "x5t#S256": _b64url(hashlib.sha256(der).digest()),
        }


class RealmKeys:
    """Signing material of one realm."""

    def __init__(self, realm: str) -> None:
        self.signing = _RsaKey(realm, "RS256", "sig")
        self.encryption = _RsaKey(realm, "RSA-OAEP", "enc")
        self.hmac_secret = secrets.token_bytes(64)
        self.hmac_kid = str(uuid.uuid4())

    def jwks(self) -> dict[str, Any]:
        """The realm's ``certs`` document."""
        return {"keys": [self.signing.jwk(), self.encryption.jwk()]}

    def public_key_b64(self) -> str:
        """The RS256 public key as base64 DER (the realm info ``public_key``)."""
        der = self.signing.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def sign(self, claims: dict[str, Any]) -> str:
        """Sign access or ID token claims with RS256."""
        return jwt.encode(
            claims,
            self.signing.private_key,
            algorithm="RS256",
            headers={"kid": self.signing.kid, "typ": "JWT"},
        )

    def sign_refresh(self, claims: dict[str, Any]) -> str:
        """Sign refresh token claims with the realm's HS512 secret."""
        return jwt.encode(
            claims,
            self.hmac_secret,
            algorithm="HS512",
            headers={"kid": self.hmac_kid, "typ": "JWT"},
        )

    def verify(self, token: str) -> dict[str, Any] | None:
        """Claims of a valid, unexpired RS256 token of this realm, else None."""
        try:
            return jwt.decode(
                token,
                self.signing.private_key.public_key(),
                algorithms=["RS256"],
                options={"verify_aud": False},
            )
        except jwt.PyJWTError:
            return None

    def verify_refresh(self, token: str) -> dict[str, Any] | None:
        """Claims of a valid, unexpired refresh token of this realm, else None."""
        try:
            return jwt.decode(token, self.hmac_secret, algorithms=["HS512"], options={"verify_aud": False})
        except jwt.PyJWTError:
            return None
