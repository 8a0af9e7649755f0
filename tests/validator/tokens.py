"""Hand-made JWTs for negative tests: forged, re-signed, `alg: none`, HMAC confusion."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from token_service.token_format import DEFAULT_PREFIX


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(header, claims, signature segment) of a compact JWS (or of a token as handed out, with
    its `mlt_` prefix), unverified."""
    h, p, s = token.removeprefix(DEFAULT_PREFIX).split(".")
    return json.loads(base64.urlsafe_b64decode(h + "==")), json.loads(base64.urlsafe_b64decode(p + "==")), s


def assemble(header: dict[str, Any], claims: dict[str, Any], signature: str) -> str:
    return ".".join((b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), signature))


def resign(token: str, key: rsa.RSAPrivateKey, **claim_changes: Any) -> str:
    """The same header (kid included) and claims with changes, signed by another key."""
    header, claims, _ = segments(token)
    claims.update(claim_changes)
    return jwt.encode(claims, key, algorithm=header["alg"], headers={"kid": header["kid"]})


def alg_none(token: str) -> str:
    header, claims, _ = segments(token)
    return assemble({**header, "alg": "none"}, claims, "")


def hmac_with_public_key(token: str, public_pem: bytes) -> str:
    """The classic key-confusion forgery: HS256 keyed with the issuer's public key."""
    header, claims, _ = segments(token)
    header = {**header, "alg": "HS256"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
