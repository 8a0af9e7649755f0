"""Property-based abuse tests (hypothesis): the bearer header, JWT parsing and claim checks
through the whole decision (tokens correctly signed by the real issuer key with arbitrary
claims), and the route-policy matcher against a reference matcher. Complements the
differential tests of test_jwt_fast.py and the matcher fuzz of test_config_policy_contracts.py.
"""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jwt import api_jws as jws

from tests.support.clock import Clock
from tests.validator import tokens
from token_service.issuers import Grant, Owner
from token_service.issuers.local import LocalIssuer
from token_service.validator import introspection
from token_service.validator.bearer import BearerError, bearer_token, is_b64token
from token_service.validator.decision import Decider, Decision, Identity
from token_service.validator.jwt_fast import TokenError, parse
from token_service.validator.policy import Policy

B64TOKEN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
BEARER_REASONS = {"header_too_large", "not_bearer", "empty_token", "token_too_large"}
RFC6750_B64TOKEN = r"[A-Za-z0-9\-._~+/]+=*"
MAX = 512
FIXTURES = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# -- the bearer header --------------------------------------------------------------------


@FIXTURES
@given(st.text(alphabet=B64TOKEN + "=", min_size=1, max_size=MAX))
@example("eyJ.eyJ.sig")
@example("")
def test_any_prefixed_string_is_refused_cleanly(decider: Decider, body: str) -> None:
    """`mlt_` and anything after it: a 401 with a reason, never an exception."""
    decider.revocations.confirmed_at = time.monotonic()
    decision = decider.decide("POST", "/v1/models/sentiment/predict", "mlt_" + body)
    assert isinstance(decision, Decision) and decision.status == 401


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=MAX + 40))
def test_any_header_yields_a_clean_token_or_a_known_refusal(header: str) -> None:
    try:
        token = bearer_token(header, MAX)
    except BearerError as exc:
        assert exc.reason in BEARER_REASONS
        return
    assert token is not None and 0 < len(token) <= MAX
    assert header.lower().startswith("bearer ") and header.endswith(token) and not token.startswith(" ")


@settings(max_examples=600, deadline=None)
@given(st.text(alphabet=B64TOKEN + "= \t,;\"'\\\x00\r\n\x7fé€", max_size=60))
def test_b64token_check_agrees_with_the_rfc_grammar(token: str) -> None:
    assert is_b64token(token) == bool(re.fullmatch(RFC6750_B64TOKEN, token))


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=B64TOKEN, min_size=1, max_size=MAX - 2),
    st.integers(0, 2),
    st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]),
    st.integers(1, 3),
)
def test_well_formed_headers_round_trip(body: str, padding: int, scheme: str, spaces: int) -> None:
    token = body + "=" * padding
    assert bearer_token(f"{scheme}{' ' * spaces}{token}", MAX) == token


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=B64TOKEN, min_size=1, max_size=50),
    st.sampled_from(list(" \t,;\"'\\\x00\r\n\x7fé")),
    st.text(alphabet=B64TOKEN, max_size=10),
)
def test_any_character_outside_b64token_is_refused(head: str, bad: str, tail: str) -> None:
    try:
        token = bearer_token(f"Bearer {head}{bad}{tail}", MAX)
    except BearerError:
        return
    assert token is not None and not is_b64token(token)


@FIXTURES
@given(st.text(alphabet=B64TOKEN + '=.!" \x00é', min_size=1, max_size=60))
@example("aGVsbG8.d29ybGQ.c2ln!")  # three segments, one character outside b64token
@example("a~b.c+d.e/f==")  # b64token, not a JWS
def test_a_token_outside_b64token_is_refused_as_malformed_header_whatever_its_shape(
    decider: Decider, token: str
) -> None:
    """The b64token check runs only on a refused token, to name the reason: every token outside
    the grammar is still refused with `malformed_header`, and no other token is."""
    decider.revocations.confirmed_at = time.monotonic()
    decision = decider.decide("POST", "/v1/models/sentiment/predict", token)
    assert isinstance(decision, Decision) and decision.status == 401
    assert (decision.reason == "malformed_header") == (not is_b64token(token))


# -- JWT parsing on structurally valid but arbitrary segments ------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values, json_values, st.binary(max_size=80))
def test_parse_of_arbitrary_json_segments_refuses_cleanly(header: Any, claims: Any, signature: bytes) -> None:
    token = ".".join(
        (
            tokens.b64(json.dumps(header).encode()),
            tokens.b64(json.dumps(claims).encode()),
            tokens.b64(signature) or "AA",
        )
    )
    try:
        parsed = parse(token, frozenset({"RS256"}))
    except TokenError:
        return
    assert isinstance(header, dict) and header["alg"] == "RS256" and isinstance(header["kid"], str)
    assert parsed.claims == claims


# -- whole decisions on tokens correctly signed with arbitrary claims -----------------------

claim_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.lists(st.text(max_size=12), max_size=3),
    st.dictionaries(st.sampled_from(["rps", "daily", "x"]), st.integers(-5, 5) | st.floats(), max_size=2),
)
CLAIMS = (
    "exp",
    "iat",
    "nbf",
    "sub",
    "jti",
    "aud",
    "iss",
    "roles",
    "scope",
    "token_id",
    "owner",
    "owner_name",
    "realm_access",
    "limits",
)


@FIXTURES
@given(st.dictionaries(st.sampled_from(CLAIMS), claim_values, min_size=1, max_size=4))
@example({"exp": float("inf")})  # json.loads("1e999") is inf: a signed token can carry it
@example({"iat": float("inf")})
@example({"nbf": float("-inf")})
@example({"limits": {"rps": float("inf")}})
def test_decisions_on_signed_arbitrary_claims_never_crash_and_allow_only_valid_tokens(
    decider: Decider, served_issuer: LocalIssuer, clock: Clock, changes: dict[str, Any]
) -> None:
    now = clock()
    grant = Grant("tid-1", "p", Owner("u-alice", "alice"), ("model:sentiment:predict",), now, now + timedelta(hours=1))
    header, claims, _ = tokens.segments(served_issuer.issue(grant).secret)
    claims = {k: v for k, v in {**claims, **changes}.items() if v is not None}
    kid, key = served_issuer.keys.signing_key()
    token = jws.encode(_json_with_literal_infinities(claims), key, algorithm=header["alg"], headers={"kid": kid})
    decider.revocations.confirmed_at = time.monotonic()  # current, as a running feed keeps it
    decision = decider.decide("POST", "/v1/models/sentiment/predict", token)
    assert isinstance(decision, Decision)
    assert decision.status in (200, 401, 403)
    # RFC 7662 introspection agrees: active exactly when the token is valid (a 403 is a valid
    # token on a route it may not call), and its answer always serializes
    identity = decider.introspect(token)
    assert isinstance(identity, Identity) == (decision.status != 401), (decision, identity)
    if isinstance(identity, Identity):
        assert json.loads(introspection.active(identity))["active"] is True
    prefixed = decider.decide("POST", "/v1/models/sentiment/predict", "mlt_" + token)  # the prefix changes nothing
    assert isinstance(prefixed, Decision) and (prefixed.status, prefixed.reason) == (decision.status, decision.reason)
    if decision.status == 200:
        stamp, leeway = now.timestamp(), decider.leeway
        assert claims["iss"] in decider.keys.issuers
        aud = claims["aud"]
        assert aud == "model-api" or (isinstance(aud, list) and "model-api" in aud)
        assert not isinstance(claims["exp"], bool) and claims["exp"] > stamp - leeway
        assert claims.get("nbf", 0) <= stamp + leeway and claims["iat"] <= stamp + leeway
        realm = claims.get("realm_access")
        roles = list(claims.get("roles") or []) + (realm.get("roles", []) if isinstance(realm, dict) else [])
        assert "model:sentiment:predict" in roles


_INF = {float("inf"): "\x00INF\x00", float("-inf"): "\x00NINF\x00"}


def _json_with_literal_infinities(claims: dict[str, Any]) -> bytes:
    """JSON with infinities written as 1e999 (valid JSON another issuer may send; json.loads
    reads it as inf), not as Python's non-standard `Infinity`."""

    def swap(value: Any) -> Any:
        if isinstance(value, float) and value in _INF:
            return _INF[value]
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(claims))
    return text.replace('"\\u0000INF\\u0000"', "1e999").replace('"\\u0000NINF\\u0000"', "-1e999").encode()


# -- the route-policy matcher against a reference -------------------------------------------

segment = st.text(alphabet="abcxyz.-_", min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))
pattern_part = st.one_of(segment, st.sampled_from(["{m}", "{n}"]))


@st.composite
def routes(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        parts, seen = [], set()
        for part in draw(st.lists(pattern_part, min_size=1, max_size=4)):
            if part in seen:
                part = part.strip("{}") + "x"
            seen.add(part)
            parts.append(part)
        path = "/" + "/".join(parts) + draw(st.sampled_from(["", "/**"]))
        out.append(
            {
                "path": path,
                "methods": draw(st.lists(st.sampled_from(["GET", "POST", "*"]), min_size=1, max_size=2)),
                "roles": ["r"],
            }
        )
    return out


def reference_match(rule: dict[str, Any], method: str, path: str) -> dict[str, str] | None:
    """Segment by segment: literal equal, {name} = one segment of [A-Za-z0-9._-], /** = anything below."""
    if not ({"*", method} & set(rule["methods"])):
        return None
    pattern, deep = rule["path"], rule["path"].endswith("/**")
    want = (pattern[:-3] if deep else pattern).split("/")[1:]
    have = path.split("/")[1:]
    if deep:
        if len(have) < len(want):
            return None
        have_head = have[: len(want)]
    else:
        if len(have) != len(want):
            return None
        have_head = have
    params = {}
    for w, h in zip(want, have_head, strict=False):
        if w.startswith("{"):
            if not re.fullmatch(r"[A-Za-z0-9._\-]+", h):
                return None
            params[w[1:-1]] = h
        elif w != h:
            return None
    return params


@settings(max_examples=300, deadline=None)
@given(
    routes(),
    st.lists(st.one_of(segment, st.sampled_from(["", "a:b", "%2e", "ä"])), min_size=1, max_size=5),
    st.sampled_from(["GET", "POST", "PUT"]),
)
def test_matcher_agrees_with_the_reference_and_denies_what_matches_nothing(
    rules: list[dict[str, Any]], parts: list[str], method: str
) -> None:
    path = "/" + "/".join(parts)
    policy = Policy.from_mapping({"routes": rules})
    expected = next(((i, p) for i, r in enumerate(rules) if (p := reference_match(r, method, path)) is not None), None)
    match = policy.match(method, path)
    if expected is None:
        assert match is None
    else:
        assert match is not None and match.rule is policy.rules[expected[0]] and match.params == expected[1]
