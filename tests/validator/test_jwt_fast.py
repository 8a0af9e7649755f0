"""The lean verify path against the PyJWT reference (`token_service.verify`), plus fuzzing.

Property: on generated tokens both accept the same tokens with the same claims; on
mutated tokens the fast path never accepts what the reference refuses, and never fails
with anything but TokenError.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.validator.tokens import b64
from token_service.config import ALGORITHMS, Settings
from token_service.validator.jwks import key_from_jwk
from token_service.validator.jwt_fast import (
    Parsed,
    TokenError,
    _json_object,
    _strict_json_object,
    b64decode,
    check_claims,
    key_fits,
    parse,
    verify_signature,
)
from token_service.validator.settings import ValidatorSettings
from token_service.verify import verify

ISS = "http://issuer.test"
AUD = "model-api"
ALGS = frozenset({"RS256", "PS256", "ES256", "ES384"})
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC256 = ec.generate_private_key(ec.SECP256R1())
EC384 = ec.generate_private_key(ec.SECP384R1())
SIGNERS = {
    "RS256": ("k-rsa", RSA_KEY),
    "PS256": ("k-rsa", RSA_KEY),
    "ES256": ("k-ec256", EC256),
    "ES384": ("k-ec384", EC384),
}


def _jwk(kid: str, key: Any) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid}


JWKS = {"keys": [_jwk("k-rsa", RSA_KEY), _jwk("k-ec256", EC256), _jwk("k-ec384", EC384)]}
KEYS = {k["kid"]: key_from_jwk(k) for k in JWKS["keys"]}
REFERENCE_SETTINGS = Settings.from_mapping({"issuer_url": ISS, "audience": AUD, "leeway": 30})


def fast(token: str, algorithms: frozenset[str] = ALGS, keys: dict[str, Any] = KEYS) -> dict[str, Any] | str:
    """The validator's path for one issuer: claims when accepted, the reason otherwise."""
    try:
        parsed = parse(token, algorithms)
        key = keys.get(parsed.kid)
        if key is None:
            return "unknown_kid"
        if not verify_signature(parsed.alg, key.key, parsed.signing_input, parsed.signature):
            return "bad_signature"
        check_claims(parsed.claims, ISS, frozenset({AUD}), time.time(), 30)
    except TokenError as exc:
        return exc.reason
    return parsed.claims


def reference(token: str, jwks: dict[str, Any] = JWKS) -> dict[str, Any] | str:
    verdict = verify(token, REFERENCE_SETTINGS, jwks, None)
    return verdict.claims if verdict.valid else verdict.reason


HOURS = st.integers(min_value=-48, max_value=48).filter(lambda h: h != 0)
claims_strategy = st.fixed_dictionaries(
    {
        "iss": st.sampled_from([ISS, ISS + "/", "http://other.test"]),
        "aud": st.one_of(st.sampled_from([AUD, "other"]), st.lists(st.sampled_from([AUD, "x", "y"]), max_size=3)),
        "sub": st.text(min_size=1, max_size=20),
        "jti": st.uuids().map(str),
        "exp_h": HOURS,
        "iat_h": HOURS,
    },
    optional={"nbf_h": HOURS, "roles": st.lists(st.text(max_size=10), max_size=3), "scope": st.text(max_size=20)},
)


def _mint(data: dict[str, Any], alg: str) -> str:
    now = int(time.time())
    claims = {k: v for k, v in data.items() if not k.endswith("_h")}
    for name in ("exp", "iat", "nbf"):
        if name + "_h" in data:
            claims[name] = now + 3600 * data[name + "_h"]
    kid, key = SIGNERS[alg]
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(claims_strategy, st.sampled_from(sorted(ALGS)))
def test_same_verdict_as_reference_on_generated_tokens(data: dict[str, Any], alg: str) -> None:
    token = _mint(data, alg)
    ours, theirs = fast(token), reference(token)
    assert isinstance(ours, dict) == isinstance(theirs, dict), (ours, theirs)
    if isinstance(ours, dict):
        assert ours == theirs


GOOD = _mint({"iss": ISS, "aud": AUD, "sub": "s", "jti": "j", "exp_h": 1, "iat_h": -1}, "RS256")


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0, max_value=len(GOOD) - 1), st.text(min_size=0, max_size=3), st.integers(0, 3))
def test_mutations_are_never_accepted_unless_the_reference_accepts(pos: int, insert: str, cut: int) -> None:
    token = GOOD[:pos] + insert + GOOD[pos + cut :]
    ours = fast(token)
    if isinstance(ours, dict):
        assert reference(token) == ours


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_is_refused_cleanly(text: str) -> None:
    assert isinstance(fast(text), str)


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "RS256", "kid": "k-rsa", "crit": ["exp"]},
        {"alg": "RS256", "kid": "k-rsa", "typ": "JWE"},
        {"alg": "RS256"},
        {"alg": "HS256", "kid": "k-rsa"},
        {"alg": "none", "kid": "k-rsa"},
    ],
)
def test_headers_refused(header: dict[str, Any]) -> None:
    _, p, sig = GOOD.split(".")
    assert isinstance(fast(".".join((b64(json.dumps(header).encode()), p, sig))), str)


def test_duplicate_claims_and_non_canonical_base64_are_refused() -> None:
    h, p, s = GOOD.split(".")
    dup = b64(b'{"iss":"%s","iss":"%s"}' % (ISS.encode(), ISS.encode()))
    assert fast(".".join((h, dup, s))) == "malformed"
    assert fast(".".join((h + "=", p, s))) == "malformed"
    last = s[-1]
    twin = chr(ord(last) + 1) if last not in "z9_-" else "A"
    assert fast(".".join((h, p, s[:-1] + twin))) in ("malformed", "bad_signature")


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _stray_bits(segment: str) -> str:
    """The same bytes with a bit set past the last one: a second, non-canonical encoding."""
    assert len(segment) % 4 in (2, 3)
    return segment[:-1] + B64URL[B64URL.index(segment[-1]) | 1]


def _sized(size: int, extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` plus a filler claim making its compact JSON's length `size` mod 3."""
    pad = ""
    while len(json.dumps({**extra, "x": pad}, separators=(",", ":"))) % 3 != size:
        pad += "a"
    return {**extra, "x": pad}


@pytest.mark.parametrize("tail", [1, 2])  # JSON length mod 3: the segment's length is 2 or 3 mod 4
@pytest.mark.parametrize("segment", [0, 1, 2])
def test_stray_bits_after_the_last_byte_are_refused_in_every_segment(tail: int, segment: int) -> None:
    """Base64url's last character can carry bits past the last byte; only zero bits are canonical,
    so a token has one encoding. Each segment with a bit set there is refused as malformed,
    though it decodes to the same bytes (PyJWT would accept it)."""
    header = _sized(tail, {"alg": "RS256", "kid": "k-rsa", "typ": "JWT"})
    now = int(time.time())
    claims = _sized(tail, {"iss": ISS, "aud": AUD, "sub": "s", "jti": "j", "exp": now + 60, "iat": now})
    h = b64(json.dumps(header, separators=(",", ":")).encode())
    p = b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{h}.{p}".encode()
    s = b64(RSA_KEY.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))  # 256 bytes: 342 characters
    parts = [h, p, s]
    assert isinstance(fast(".".join(parts)), dict)
    twin = _stray_bits(parts[segment])
    assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(parts[segment] + "==")
    parts[segment] = twin
    assert fast(".".join(parts)) == "malformed"


def _reencoded(segment: bytes) -> bytes | None:
    """The reference definition: what standard base64 decodes, if re-encoding it gives the segment back."""
    try:
        raw = binascii.a2b_base64(segment.translate(bytes.maketrans(b"-_", b"+/")) + b"=" * (-len(segment) % 4))
    except binascii.Error:
        return None
    encoded = binascii.b2a_base64(raw, newline=False).translate(bytes.maketrans(b"+/", b"-_")).rstrip(b"=")
    return raw if encoded == segment else None


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=12) | st.text(alphabet=B64URL + "+/=.~ \n!\x00\xff", max_size=12).map(str.encode))
def test_b64decode_takes_exactly_the_canonical_encodings(segment: bytes) -> None:
    """Checking the last character's unused bits decides as decoding, re-encoding and comparing does."""
    try:
        ours: bytes | None = b64decode(segment)
    except TokenError:
        ours = None
    assert ours == (_reencoded(segment) if segment else None)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=900), st.integers(min_value=0), st.sampled_from(b"+/=.~ \n!\x00\xff-_Aw"), st.booleans())
def test_b64decode_agrees_with_the_reference_on_token_sized_segments(
    raw: bytes, where: int, byte: int, mutate: bool
) -> None:
    """pybase64 decodes long inputs with SIMD code the short inputs above never reach: segments of
    a token's sizes (a signature is 342 characters, a payload several hundred), valid or with one
    byte replaced anywhere, decode exactly as the reference does (or are refused where it refuses)."""
    segment = base64.urlsafe_b64encode(raw).rstrip(b"=")
    if mutate and segment:
        i = where % len(segment)
        segment = segment[:i] + bytes([byte]) + segment[i + 1 :]
    try:
        ours: bytes | None = b64decode(segment)
    except TokenError:
        ours = None
    assert ours == (_reencoded(segment) if segment else None)


_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


def _parsed(parse_json: Any, raw: bytes) -> Any:
    try:
        return ("ok", parse_json(raw))
    except TokenError as exc:
        return ("refused", exc.reason)


@settings(max_examples=3000, deadline=None)
@given(
    st.dictionaries(st.text(max_size=6), _JSON, max_size=6),
    st.sampled_from([{"separators": (",", ":")}, {"separators": (",", ":"), "ensure_ascii": False}, {}]),
    st.integers(min_value=0),
    st.sampled_from([b"", b" ", b",", b'"', b"\\", b"\x00", b"\x1f", b"\xed\xa0\x80", b"\xff", b"-0", b"1e5", b"NaN"]),
    st.booleans(),
)
def test_claims_json_decides_as_the_strict_parser(
    obj: dict[str, Any], style: dict[str, Any], where: int, insert: bytes, duplicate: bool
) -> None:
    """msgspec decodes a token's JSON only when re-encoding gives back its bytes; whatever the text,
    canonical or not, duplicate keys and bytes inserted anywhere included, the answer (the object,
    or the refusal) is the strict parser's."""
    raw = json.dumps(obj, **style).encode()
    if duplicate and obj:
        first = json.dumps(dict([next(iter(obj.items()))]), **style).encode()
        raw = raw[:-1] + b"," + first[1:]  # the first member again, compact as the rest
    if insert:
        i = where % (len(raw) + 1)
        raw = raw[:i] + insert + raw[i:]
    ours, strict = _parsed(_json_object, raw), _parsed(_strict_json_object, raw)
    assert ours == strict
    if ours[0] == "ok":  # equal as JSON values, and the same types (1.0 is no 1, True no 1)
        assert json.dumps(ours[1], sort_keys=True) == json.dumps(strict[1], sort_keys=True)


def test_canonical_json_with_a_repeated_key_is_refused() -> None:
    """The re-encoding check is what catches it: msgspec alone keeps the last copy."""
    with pytest.raises(TokenError):
        _json_object(b'{"sub":"alice","roles":["a"],"sub":"root"}')
    assert _json_object(b'{"sub":"alice","exp":1.5,"n":12345678901234567890123}') == {
        "sub": "alice",
        "exp": 1.5,
        "n": 12345678901234567890123,
    }


def test_key_type_must_fit_the_algorithm() -> None:
    """An RS256 header on a token whose kid names an EC key is refused."""
    claims = {"iss": ISS, "aud": AUD, "sub": "s", "jti": "j", "exp": int(time.time()) + 60, "iat": int(time.time())}
    token = jwt.encode(claims, RSA_KEY, algorithm="RS256", headers={"kid": "k-ec256"})
    assert fast(token) == "bad_signature"


def test_a_good_token_is_accepted_by_both_with_the_same_claims() -> None:
    parsed = parse(GOOD, ALGS)  # made by tuple.__new__: every field given
    assert len(parsed) == len(Parsed._fields) and parsed.signature == b64decode(GOOD.rsplit(".", 1)[1].encode())
    ours = fast(GOOD)
    assert isinstance(ours, dict) and ours == reference(GOOD)


def test_key_fits_only_its_own_algorithms() -> None:
    rsa_key = rsa.generate_private_key(65537, 2048).public_key()
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    for _ in range(2):  # the second round answers from the remembered key classes
        assert [key_fits(a, rsa_key) for a in ("RS256", "PS384", "ES256")] == [True, True, False]
        assert [key_fits(a, p256) for a in ("ES256", "ES384", "RS256", "PS256")] == [True, False, False, False]


EC521 = ec.generate_private_key(ec.SECP521R1())
EVERY_KEY = {
    "RS": ("k-rsa", RSA_KEY),
    "PS": ("k-rsa", RSA_KEY),
    "ES256": ("k-ec256", EC256),
    "ES384": ("k-ec384", EC384),
    "ES512": ("k-ec521", EC521),
}
EVERY_JWKS = {"keys": [*JWKS["keys"], _jwk("k-ec521", EC521)]}
EVERY_KEYS = {k["kid"]: key_from_jwk(k) for k in EVERY_JWKS["keys"]}


def validator_path(token: str) -> dict[str, Any] | str:
    """The fast path with the validator's own default allow-list (`algorithms` not configured)."""
    allowed = ValidatorSettings.from_mapping({"policy_file": "p.yaml"}, REFERENCE_SETTINGS).algorithms
    return fast(token, frozenset(allowed), EVERY_KEYS)


def check_path(token: str) -> dict[str, Any] | str:
    """`mltokens check`'s path (PyJWT)."""
    return reference(token, EVERY_JWKS)


def _claims() -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISS, "aud": AUD, "sub": "s", "jti": "j", "exp": now + 60, "iat": now}


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_algorithm_of_the_one_list_is_accepted_by_the_validator_and_check(alg: str) -> None:
    kid, key = EVERY_KEY.get(alg) or EVERY_KEY[alg[:2]]
    claims = _claims()
    token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
    assert validator_path(token) == claims
    assert check_path(token) == claims


@pytest.mark.parametrize(
    "alg, key",
    [
        ("HS256", b"k" * 32),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
        ("none", None),
    ],
)
def test_algorithms_outside_the_list_are_refused_by_the_validator_and_check(alg: str, key: Any) -> None:
    assert alg not in ALGORITHMS
    token = jwt.encode(_claims(), key, algorithm=alg, headers={"kid": "k-rsa"})
    assert validator_path(token) == "algorithm_not_allowed"
    assert check_path(token) == f"algorithm {alg!r} is not allowed"


NOW = int(time.time())


def _claim_types(changes: dict[str, Any]) -> str:
    """A test id that does not depend on NOW (xdist workers must collect the same ids)."""
    return ",".join(f"{name}={type(value).__name__}" for name, value in changes.items())


def _signed_json(claims: dict[str, Any]) -> str:
    """Any JSON claims (PyJWT's encode refuses a non-string iss), validly signed with RS256."""
    return jwt.api_jws.PyJWS().encode(json.dumps(claims).encode(), RSA_KEY, "RS256", {"kid": "k-rsa"})


@pytest.mark.parametrize(
    "changes",
    [
        {"nbf": None},
        {"iat": None},
        {"exp": None},
        {"exp": 10**400},
        {"exp": 2**1024 - 1},
        {"nbf": 10**400},
        {"nbf": -(10**400)},
        {"iat": -(10**400)},
        {"exp": str(NOW + 3600)},
        {"iat": str(NOW)},
        {"nbf": str(NOW)},
        {"nbf": ""},
        {"exp": True},
        {"iat": False},
        {"nbf": False},
        {"exp": float("nan")},
        {"exp": float("inf")},
        {"nbf": float("-inf")},
        {"iat": float("nan")},
        {"exp": [NOW + 3600]},
        {"exp": {"t": NOW + 3600}},
        {"nbf": [NOW]},
        {"aud": []},
        {"aud": [AUD, 1]},
        {"aud": [[AUD]]},
        {"aud": {AUD: True}},
        {"aud": ""},
        {"aud": None},
        {"aud": [None]},
        {"aud": 1},
        {"iss": [ISS]},
        {"iss": None},
        {"iss": ISS + "/"},
        {"sub": ""},
        {"jti": ""},
        {"sub": 1},
        {"jti": ["j"]},
        {"sub": None},
    ],
    ids=_claim_types,
)
def test_odd_claim_types_are_refused_by_both_paths_without_errors(changes: dict[str, Any]) -> None:
    """Validly signed tokens with claims of the wrong type (null, strings, booleans, NaN,
    integers beyond a float, odd audiences) are refused by both, never with an exception."""
    token = _signed_json(_claims() | changes)
    ours, theirs = validator_path(token), check_path(token)
    assert isinstance(ours, str) and isinstance(theirs, str), (ours, theirs)
    assert ours not in ("expired", "not_yet_valid", "bad_signature"), ours  # refused for its type


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": float(NOW + 3600)},
        {"iat": NOW - 0.5},
        {"nbf": NOW - 10**6},
        {"nbf": float(NOW)},
        {"exp": 10**300},
        {"exp": 1e300},
        {"aud": [AUD, "other"]},
        {"aud": [AUD]},
    ],
    ids=_claim_types,
)
def test_unusual_but_well_typed_claims_are_accepted_by_both_paths(changes: dict[str, Any]) -> None:
    claims = _claims() | changes
    token = _signed_json(claims)
    assert validator_path(token) == check_path(token) == claims


ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.integers(),
    st.integers(min_value=2**1023),
    st.floats(allow_nan=True, allow_infinity=True),
    HOURS.map(lambda h: NOW + 3600 * h),
    HOURS.map(lambda h: float(NOW + 3600 * h)),
    st.lists(st.sampled_from([AUD, "x", 1, None]), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["exp", "iat", "nbf", "aud", "iss", "sub", "jti"]), ODD_VALUES)
def test_any_claim_value_gets_the_same_verdict_from_both_paths(name: str, value: Any) -> None:
    claims = _claims() | {name: value}
    token = _signed_json(claims)
    ours, theirs = validator_path(token), check_path(token)
    assert isinstance(ours, dict) == isinstance(theirs, dict), (ours, theirs)


def test_check_compares_an_issuer_ending_in_a_slash_exactly() -> None:
    slash = Settings.from_mapping({"issuer_url": ISS + "/", "audience": AUD, "leeway": 30})
    ours, without = _signed_json(_claims() | {"iss": ISS + "/"}), _signed_json(_claims())
    assert verify(ours, slash, JWKS, None).valid
    assert not verify(without, slash, JWKS, None).valid
