"""Lean, strict JWS compact parsing and verification with `cryptography`.

Security code written by hand, so it is deliberately stricter than PyJWT and is tested
differentially against `token_service.verify` (PyJWT) and fuzzed:

- exactly three non-empty, canonical base64url segments (no padding, no stray bits);
- header and payload are JSON objects without duplicate keys or NaN/Infinity;
- `alg` must be in the configured allow-list (never `none`, never HMAC), `kid` is
  required, `crit` is refused (no extension is understood), `typ` if present is a JWT type;
- the key's type (and curve) must fit `alg`, and a JWK's own `alg`, if any, must equal it;
- `exp`, `iat`, `iss`, `aud`, `sub`, `jti` are required; `exp`, `iat` and `nbf` (if
  present, even as null) must be numbers a float can hold (not booleans, strings, null,
  NaN/Infinity or integers beyond 1.8e308); `nbf` is honoured; leeway applies to `exp`,
  `nbf` and `iat`.
"""

from __future__ import annotations

import binascii
import json
import math
from typing import Any, NamedTuple

import msgspec
import pybase64
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .memo import remember
from .reasons import Reason, Refused

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_HASHES: dict[str, hashes.HashAlgorithm] = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
_PKCS1V15 = padding.PKCS1v15()
_CURVES = {"ES256": ("secp256r1", 32), "ES384": ("secp384r1", 48), "ES512": ("secp521r1", 66)}
_JWT_TYPES = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})
# base64url to standard base64; the standard alphabet's own "+", "/" and "=" become "!", which
# a strict decode refuses like any byte outside the alphabet.
_TO_STD = bytes.maketrans(b"-_+/=", b"+/!!!")
_PADDING = (b"", b"", b"==", b"=")  # by the segment's length mod 4 (1 is refused before)
# The last character of a segment of length 2 or 3 mod 4 carries 4 or 2 bits beyond the last
# byte; canonical base64url leaves them zero. Allowed last characters by length mod 4:
_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_CANONICAL_LAST = (_B64URL, b"", _B64URL[::16], _B64URL[::4])


class TokenError(Refused):
    """The token is refused; `reason` is for logs and metrics, never for the client."""


_new = tuple.__new__  # a NamedTuple by tuple.__new__: its own __new__ is interpreted (decision.py)


class Parsed(NamedTuple):  # cheaper to build than a frozen dataclass, which sets each field by object.__setattr__
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return self.header["alg"]

    @property
    def kid(self) -> str:
        return self.header["kid"]


def b64decode(segment: bytes) -> bytes:
    """Strict, canonical base64url without padding: only the base64url alphabet, and the bits
    past the last byte zero (the same as re-encoding and comparing, without the re-encoding)."""
    tail = len(segment) % 4
    if not segment or tail == 1 or segment[-1] not in _CANONICAL_LAST[tail]:
        raise TokenError(Reason.MALFORMED)
    try:  # pybase64 (SIMD): a fifth of binascii's time on a payload (docs/benchmarks.md, "The cold path")
        return pybase64.b64decode(segment.translate(_TO_STD) + _PADDING[tail], validate=True)
    except binascii.Error:
        raise TokenError(Reason.MALFORMED) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise TokenError(Reason.MALFORMED)
    return obj


def _no_constants(name: str) -> Any:
    raise TokenError(Reason.MALFORMED)


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


_FAST_DECODE = msgspec.json.Decoder().decode
_FAST_ENCODE = msgspec.json.Encoder().encode


def _json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object `raw`, by `_strict_json_object`'s rules.

    msgspec's parser is used only when its object encodes back to the very same bytes:
    compact, canonical JSON, as issuers write it. A duplicate key (one copy dropped), white
    space, an escape, a non-canonical number or a constant cannot come back unchanged, so
    such text, and any msgspec refuses, is left to the strict parser (which refuses a
    duplicate or a constant). Equal bytes also mean equal values: a number whose shortest
    form is its own text is the double that text rounds to (docs/benchmarks.md)."""
    try:
        obj = _FAST_DECODE(raw)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return _strict_json_object(raw)
    if type(obj) is dict and _FAST_ENCODE(obj) == raw:
        return obj
    return _strict_json_object(raw)


def _strict_json_object(raw: bytes) -> dict[str, Any]:
    """As `json.loads(raw, ...)` with `_DECODER`'s hooks, without building a decoder per call.

    Bytes that start with "{" and then no NUL are UTF-8 (`json.detect_encoding`'s answer
    too); their object is scanned from the first character, and only text left after it
    (white space, or extra data to refuse) goes the whole way of `decode`."""
    try:
        if raw[:1] == b"{" and raw[1:2] != b"\0":
            text = raw.decode("utf-8", "surrogatepass")
            obj, end = _DECODER.scan_once(text, 0)
            if end != len(text):
                obj = _DECODER.decode(text)
        else:
            obj = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (ValueError, RecursionError, StopIteration):
        raise TokenError(Reason.MALFORMED) from None
    if not isinstance(obj, dict):
        raise TokenError(Reason.MALFORMED)
    return obj


def parse(token: str, algorithms: frozenset[str]) -> Parsed:
    """Split and decode a compact JWS and check its header; nothing is trusted yet."""
    try:
        data = token.encode("ascii")
    except UnicodeEncodeError:
        raise TokenError(Reason.MALFORMED) from None
    parts = data.split(b".")
    if len(parts) != 3:
        raise TokenError(Reason.MALFORMED)
    header = _header(parts[0], algorithms)
    claims = _json_object(b64decode(parts[1]))
    signature = b64decode(parts[2])
    return _new(Parsed, (header, claims, data[: len(parts[0]) + 1 + len(parts[1])], signature))


# Checked headers by their encoded segment: an issuer's tokens share a few (one per key).
_HEADERS: dict[tuple[bytes, frozenset[str]], dict[str, Any]] = {}
_HEADER_CACHE_ENTRIES = 256
_HEADER_CACHE_BYTES = 512


def _header(segment: bytes, algorithms: frozenset[str]) -> dict[str, Any]:
    key = (segment, algorithms)
    header = _HEADERS.get(key)
    if header is None:
        header = _check_header(segment, algorithms)
        if len(segment) <= _HEADER_CACHE_BYTES:
            remember(_HEADERS, key, header, _HEADER_CACHE_ENTRIES)
    return header


def _check_header(segment: bytes, algorithms: frozenset[str]) -> dict[str, Any]:
    header = _json_object(b64decode(segment))
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise TokenError(Reason.ALGORITHM_NOT_ALLOWED)
    if not isinstance(header.get("kid"), str):
        raise TokenError(Reason.MISSING_KID)
    if "crit" in header:
        raise TokenError(Reason.UNSUPPORTED_HEADER)
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _JWT_TYPES):
        raise TokenError(Reason.UNSUPPORTED_HEADER)
    return header


# Key classes by whether they are RSA: an isinstance check against cryptography's abstract
# classes costs more than the rest of the claim checks together.
_IS_RSA: dict[type, bool] = {}


def _is_rsa(key: PublicKey) -> bool:
    kind = type(key)
    rsa_key = _IS_RSA.get(kind)
    if rsa_key is None:
        rsa_key = _IS_RSA[kind] = issubclass(kind, rsa.RSAPublicKey)
    return rsa_key


def key_fits(alg: str, key: PublicKey) -> bool:
    """Whether a key may verify this algorithm (RSA for RS/PS, the matching curve for ES)."""
    if alg[:2] in ("RS", "PS"):
        return _is_rsa(key)
    curve = _CURVES.get(alg)
    return curve is not None and isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == curve[0]


def verify_signature(alg: str, key: PublicKey, signing_input: bytes, signature: bytes) -> bool:
    """True when `signature` is `alg`'s signature of `signing_input` under `key`."""
    if not key_fits(alg, key):
        return False
    digest = _HASHES[alg[2:]]
    try:
        if alg[0] == "R":
            key.verify(signature, signing_input, _PKCS1V15, digest)  # type: ignore[call-arg,union-attr]
        elif alg[0] == "P":
            pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            key.verify(signature, signing_input, pss, digest)  # type: ignore[call-arg,union-attr]
        else:
            size = _CURVES[alg][1]
            if len(signature) != 2 * size:
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(digest))  # type: ignore[call-arg,union-attr]
    except InvalidSignature:
        return False
    return True


def _number(claims: dict[str, Any], name: str, required: bool) -> int | None:
    if name not in claims:
        if required:
            raise TokenError(Reason.MISSING_CLAIM)
        return None
    value = claims[name]
    if value is None and required:
        raise TokenError(Reason.MISSING_CLAIM)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TokenError(Reason.MALFORMED_CLAIM)  # null for an optional claim included
    try:
        finite = math.isfinite(value)  # json.loads reads 1e999 as inf
    except OverflowError:  # an integer no float can hold: later arithmetic with the leeway would fail
        finite = False
    if not finite:
        raise TokenError(Reason.MALFORMED_CLAIM)
    return int(value)


def check_claims(claims: dict[str, Any], issuer: str, audiences: frozenset[str], now: float, leeway: float) -> None:
    """Registered claims: iss, aud, exp, nbf, iat, sub and jti."""
    if claims.get("iss") != issuer:
        raise TokenError(Reason.WRONG_ISSUER)
    _check_audience(claims.get("aud"), audiences)
    _check_times(claims, now, leeway)
    _check_identifiers(claims)


def _check_audience(aud: Any, audiences: frozenset[str]) -> None:
    """`aud`: one of `audiences`, or a non-empty list of strings naming one."""
    if isinstance(aud, str):
        if aud not in audiences:
            raise TokenError(Reason.WRONG_AUDIENCE)
    elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        if audiences.isdisjoint(aud):
            raise TokenError(Reason.WRONG_AUDIENCE)
    else:
        raise TokenError(Reason.WRONG_AUDIENCE if aud is None else Reason.MALFORMED_CLAIM)


def _check_times(claims: dict[str, Any], now: float, leeway: float) -> None:
    """`exp` not passed, `nbf` (if any) and `iat` not ahead, each with the leeway."""
    exp = _number(claims, "exp", True)
    assert exp is not None
    if exp <= now - leeway:
        raise TokenError(Reason.EXPIRED)
    nbf = _number(claims, "nbf", False)
    if nbf is not None and nbf > now + leeway:
        raise TokenError(Reason.NOT_YET_VALID)
    iat = _number(claims, "iat", True)
    assert iat is not None
    if iat > now + leeway:
        raise TokenError(Reason.NOT_YET_VALID)


def _check_identifiers(claims: dict[str, Any]) -> None:
    """`sub` and `jti`: non-empty strings."""
    for name in ("sub", "jti"):
        value = claims.get(name)
        if value is None:
            raise TokenError(Reason.MISSING_CLAIM)
        if not isinstance(value, str) or not value:
            raise TokenError(Reason.MALFORMED_CLAIM)
