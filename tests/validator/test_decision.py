"""Every branch of a decision, on tokens minted by the real local issuer and real forgeries."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from hashlib import sha256
from typing import Any

import jwt
import pytest
from sqlalchemy import text

from tests.support.clock import Clock
from tests.support.stack import free_port
from tests.validator import tokens
from tests.validator.conftest import DEMO_POLICY, serving
from token_service.issuers import ORGANIZATION, Owner
from token_service.issuers.local import LocalIssuer
from token_service.lifecycle import Actor, Lifecycle
from token_service.store import Store
from token_service.validator.bearer import BearerError, bearer_token
from token_service.validator.decision import (
    IDENTITY_HEADERS,
    SHARED_SETS,
    Decider,
    Decision,
    Identity,
    NeedKeys,
)
from token_service.validator.jwks import KeyCache
from token_service.validator.policy import Policy
from token_service.validator.revocations import LOAD_SQL, RevocationSet
from token_service.validator.settings import ValidatorSettings

PREDICT = ("POST", "/v1/models/sentiment/predict")
TRAIN = ("POST", "/v1/models/sentiment/train")
ALICE = Owner("u-alice", "alice")


def _token(lifecycle: Lifecycle, roles: tuple[str, ...] = ("model:sentiment:predict",), **kw: Any) -> tuple[str, str]:
    issued = lifecycle.create(ALICE, kw.pop("name", "t"), roles, **kw)
    return issued.secret, issued.info.id


def _signed(issuer: LocalIssuer, token: str, **changes: Any) -> str:
    """The token's claims with changes, correctly signed by the issuer's own current key."""
    header, claims, _ = tokens.segments(token)
    claims.update(changes)
    for name in [k for k, v in changes.items() if v is None]:
        del claims[name]
    kid, key = issuer.keys.signing_key()
    return jwt.encode(claims, key, algorithm=header["alg"], headers={"kid": kid})


def _decide(decider: Decider, token: str | None, route: tuple[str, str] = PREDICT) -> Decision:
    result = decider.decide(route[0], route[1], token)
    assert isinstance(result, Decision), result
    return result


def _load_revocations(store: Store, revocations: RevocationSet) -> None:
    with store.engine.connect() as conn:
        revocations.replace(conn.execute(text(LOAD_SQL)).all(), time.time())


def test_good_token_is_allowed_with_identity_headers(decider: Decider, served_lifecycle: Lifecycle) -> None:
    token, token_id = _token(served_lifecycle)
    d = _decide(decider, token)
    assert (d.status, d.reason, d.token_id) == (200, "allowed", token_id)
    headers = dict(d.headers)
    assert [name for name, _ in d.headers] == ["cache-control", *IDENTITY_HEADERS]  # each once, in this order
    # made by tuple.__new__ on the cold path: every field given, none by a default
    (verified,) = decider.cache.values()
    assert (len(d), len(verified.identity)) == (len(Decision._fields), len(Identity._fields))
    assert verified.identity.client_id == token_id and verified.identity.expires_at > time.time()
    assert headers["x-auth-subject"] == "u-alice" and headers["x-auth-owner-name"] == "alice"
    assert headers["x-auth-owner-kind"] == "user"
    assert headers["x-auth-token-id"] == token_id
    assert headers["x-auth-roles"] == "model:sentiment:predict"


def test_an_organization_token_says_its_owner_is_an_organization(
    decider: Decider, served_lifecycle: Lifecycle, served_issuer: LocalIssuer
) -> None:
    """issue 14 item 5: an organization's token names the organization as owner, of kind `organization`;
    our tokens minted before owner kinds existed (no claim) are users'."""
    ml_team = Owner("o-ml", "ml-team", ORGANIZATION)
    actor = Actor("u-alice", "alice", acting_for=ml_team)
    issued = served_lifecycle.create(ml_team, "batch scoring", ["model:sentiment:predict"], actor=actor)
    headers = dict(_decide(decider, issued.secret).headers)
    assert (headers["x-auth-owner"], headers["x-auth-owner-name"], headers["x-auth-owner-kind"]) == (
        "o-ml",
        "ml-team",
        "organization",
    )
    assert headers["x-auth-subject"] == "o-ml"  # nobody's person: the organization itself
    legacy = _signed(served_issuer, _token(served_lifecycle)[0], owner_kind=None)
    assert dict(_decide(decider, legacy).headers)["x-auth-owner-kind"] == "user"
    odd = _signed(served_issuer, issued.secret, owner_kind=["organization"])
    assert _decide(decider, odd).reason == "malformed_claim"


def test_missing_token_is_401_without_error_code(decider: Decider) -> None:
    d = _decide(decider, None)
    assert (d.status, d.reason) == (401, "missing_token")
    assert dict(d.headers)["www-authenticate"] == 'Bearer realm="mltokens"'


@pytest.mark.parametrize(
    "header, reason",
    [
        ("Basic dXNlcjpwYXNz", "not_bearer"),
        ("Bearer", "empty_token"),
        ("Bearer    ", "empty_token"),
        ("Bearer abc def", "malformed_header"),
        ("Bearer ab\x00c", "malformed_header"),
        ("Bearer " + "a" * 65536, "header_too_large"),
        ("Bearer " + "a" * 8190, "token_too_large"),
    ],
)
def test_malformed_authorization_headers(decider: Decider, header: str, reason: str) -> None:
    """Framing is refused by bearer_token; characters outside b64token by the decision."""
    if reason == "malformed_header":
        assert _decide(decider, bearer_token(header, 8182)).reason == reason
        return
    with pytest.raises(BearerError) as exc:
        bearer_token(header, 8182)
    assert exc.value.reason == reason


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bEaReR abc.def.ghi", 100) == "abc.def.ghi"


@pytest.mark.parametrize(
    "forge, reason",
    [
        (lambda t, i: t[:-10] + ("A" if t[-10] != "A" else "B") + t[-9:], "bad_signature"),
        (lambda t, i: tokens.assemble(*_with_roles(t, ["model:sentiment:train"])), "bad_signature"),
        (lambda t, i: tokens.resign(t, tokens.attacker_key()), "bad_signature"),
        (lambda t, i: tokens.alg_none(t), "algorithm_not_allowed"),
        (
            lambda t, i: tokens.hmac_with_public_key(t, tokens.public_pem(i.keys.signing_key()[1].public_key())),
            "algorithm_not_allowed",
        ),
        (lambda t, i: t + ".x", "malformed"),
        (lambda t, i: t.replace(".", "..", 1), "malformed"),
        (lambda t, i: "not-a-jwt", "malformed"),
    ],
)
def test_forged_and_malformed_tokens_are_401(
    decider: Decider, served_lifecycle: Lifecycle, served_issuer: LocalIssuer, forge: Any, reason: str
) -> None:
    token, _ = _token(served_lifecycle)
    d = _decide(decider, forge(token, served_issuer))
    assert (d.status, d.reason) == (401, reason)
    assert 'error="invalid_token"' in dict(d.headers)["www-authenticate"]


def _with_roles(token: str, roles: list[str]) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, claims, signature = tokens.segments(token)
    return header, {**claims, "roles": roles}, signature


def test_unknown_kid_asks_for_a_refetch_once_then_refuses(
    decider: Decider, served_lifecycle: Lifecycle, served_issuer: LocalIssuer
) -> None:
    token, _ = _token(served_lifecycle)
    _, claims, _ = tokens.segments(token)
    forged = jwt.encode(claims, tokens.attacker_key(), algorithm="RS256", headers={"kid": "no-such-kid"})
    assert decider.decide(*PREDICT, forged) == NeedKeys(served_issuer.issuer_url)
    d = decider.decide(*PREDICT, forged, refetched=True)
    assert isinstance(d, Decision) and (d.status, d.reason) == (401, "unknown_kid")


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"iss": "http://evil.example"}, "unknown_issuer"),
        ({"iss": None}, "unknown_issuer"),
        ({"aud": "another-api"}, "wrong_audience"),
        ({"aud": ["another-api", "third"]}, "wrong_audience"),
        ({"aud": None}, "wrong_audience"),
        ({"exp": None}, "missing_claim"),
        ({"exp": "9999999999"}, "malformed_claim"),
        ({"jti": None}, "missing_claim"),
        ({"sub": 42}, "malformed_claim"),
        ({"roles": "model:sentiment:predict"}, "malformed_claim"),
    ],
)
def test_claim_checks(
    decider: Decider, served_lifecycle: Lifecycle, served_issuer: LocalIssuer, changes: dict[str, Any], reason: str
) -> None:
    token, _ = _token(served_lifecycle)
    d = _decide(decider, _signed(served_issuer, token, **changes))
    assert (d.status, d.reason) == (401, reason)


@pytest.mark.parametrize(
    "changes",
    [
        {"nbf": None},
        {"iat": None},
        {"exp": 10**400},
        {"exp": 2**1024 - 1},
        {"nbf": -(10**400)},
        {"nbf": "0"},
        {"exp": True},
        {"exp": float("nan")},
        {"aud": []},
        {"iss": ["x"]},
    ],
    ids=lambda c: repr(c)[:30],
)
def test_validly_signed_claims_of_the_wrong_type_are_401_not_503(
    decider: Decider, served_lifecycle: Lifecycle, served_issuer: LocalIssuer, changes: dict[str, Any]
) -> None:
    """null times, integers beyond a float, NaN: malformed claims (a TypeError or OverflowError was a 503)."""
    token, _ = _token(served_lifecycle)
    header, claims, _ = tokens.segments(token)
    kid, key = served_issuer.keys.signing_key()
    signed = jwt.api_jws.PyJWS().encode(json.dumps({**claims, **changes}).encode(), key, header["alg"], {"kid": kid})
    d = _decide(decider, signed)
    assert d.status == 401 and d.reason in (
        "malformed_claim",
        "missing_claim",
        "malformed",
        "wrong_audience",
        "unknown_issuer",
    ), d


@pytest.mark.parametrize(
    "changes",
    [
        {"owner_name": "\ud800"},
        {"sub": "u-\udfff"},
        {"roles": ["model:sentiment:predict", "a\ud800"]},
        {"jti": "\ud800"},
    ],
    ids=["owner_name", "sub", "roles", "jti"],
)
def test_a_lone_surrogate_in_a_claim_is_a_malformed_claim_not_a_503(
    decider: Decider, served_lifecycle: Lifecycle, served_issuer: LocalIssuer, changes: dict[str, Any]
) -> None:
    """JSON's "\\ud800" reads as a string with no UTF-8: encoding it for an identity header or a
    revocation digest raised UnicodeEncodeError, a 503 with a traceback on every request."""
    token, _ = _token(served_lifecycle)
    signed = _signed(served_issuer, token, **changes)
    d = _decide(decider, signed)
    assert (d.status, d.reason) == (401, "malformed_claim") and 'error="invalid_token"' in dict(d.headers)[
        "www-authenticate"
    ]
    introspected = decider.introspect(signed)  # answered {"active": false}
    assert isinstance(introspected, Decision) and introspected.reason == "malformed_claim"


def test_audience_list_containing_ours_is_accepted(
    decider: Decider, served_lifecycle: Lifecycle, served_issuer: LocalIssuer
) -> None:
    token, _ = _token(served_lifecycle)
    assert _decide(decider, _signed(served_issuer, token, aud=["other", "model-api"])).status == 200


def test_expiry_with_leeway(decider: Decider, served_lifecycle: Lifecycle, clock: Clock) -> None:
    token, _ = _token(served_lifecycle, ttl=timedelta(minutes=5))
    clock.advance(timedelta(minutes=5, seconds=29))  # leeway 30 s
    assert _decide(decider, token).status == 200
    clock.advance(timedelta(seconds=1))
    assert (_decide(decider, token).status, _decide(decider, token).reason) == (401, "expired")


def test_not_yet_valid(decider: Decider, served_lifecycle: Lifecycle, served_issuer: LocalIssuer, clock: Clock) -> None:
    token, _ = _token(served_lifecycle)
    now = int(clock().timestamp())
    assert _decide(decider, _signed(served_issuer, token, nbf=now + 31)).reason == "not_yet_valid"
    assert _decide(decider, _signed(served_issuer, token, iat=now + 31)).reason == "not_yet_valid"
    assert _decide(decider, _signed(served_issuer, token, nbf=now + 29)).status == 200


def test_revoked_by_jti_and_by_token_id(
    decider: Decider, served_lifecycle: Lifecycle, revocations: RevocationSet, clock: Clock
) -> None:
    by_jti, _ = _token(served_lifecycle, name="a")
    by_id, by_id_token_id = _token(served_lifecycle, name="b")
    now = clock().timestamp()
    assert _decide(decider, by_jti).status == 200  # cached now: revocation must still be checked
    revocations.add(tokens.segments(by_jti)[1]["jti"], None, now, now)
    revocations.add(None, by_id_token_id, now, now)
    assert (_decide(decider, by_jti).status, _decide(decider, by_jti).reason) == (401, "revoked")
    assert (_decide(decider, by_id).status, _decide(decider, by_id).reason) == (401, "revoked")


def test_revoked_through_the_lifecycle_and_loaded_from_postgres(
    decider: Decider, served_lifecycle: Lifecycle, store: Store, revocations: RevocationSet
) -> None:
    token, token_id = _token(served_lifecycle)
    served_lifecycle.revoke(token_id, Actor.operator())
    _load_revocations(store, revocations)
    assert _decide(decider, token).reason == "revoked"


def test_renewed_away_jti_is_refused_and_the_new_one_allowed(
    decider: Decider, served_lifecycle: Lifecycle, store: Store, revocations: RevocationSet
) -> None:
    old, token_id = _token(served_lifecycle)
    new = served_lifecycle.renew(token_id, Actor.operator()).secret
    _load_revocations(store, revocations)
    assert _decide(decider, old).reason == "revoked"
    assert _decide(decider, new).status == 200


def test_renewal_grace_period_is_honoured(
    decider: Decider, served_lifecycle: Lifecycle, store: Store, revocations: RevocationSet, clock: Clock
) -> None:
    served_lifecycle.settings = served_lifecycle.settings.replace(renew_grace=timedelta(minutes=10))
    old, token_id = _token(served_lifecycle)
    served_lifecycle.renew(token_id, Actor.operator())
    with store.engine.connect() as conn:
        rows = conn.execute(text(LOAD_SQL)).all()
    revocations.replace(rows, clock().timestamp())
    assert _decide(decider, old).status == 200
    clock.advance(timedelta(minutes=10))
    assert _decide(decider, old).reason == "revoked"


def test_policy_insufficient_role_no_route_and_anonymous(decider: Decider, served_lifecycle: Lifecycle) -> None:
    token, _ = _token(served_lifecycle)
    d = _decide(decider, token, TRAIN)
    assert (d.status, d.reason) == (403, "insufficient_role")
    assert 'error="insufficient_scope"' in dict(d.headers)["www-authenticate"]
    assert _decide(decider, token, ("POST", "/v1/models/vision/predict")).reason == "insufficient_role"
    assert _decide(decider, token, ("GET", "/v1/models/sentiment/predict")).reason == "no_route"
    assert _decide(decider, token, ("POST", "/admin")).reason == "no_route"
    anonymous = _decide(decider, None, ("GET", "/healthz"))
    assert anonymous.status == 200 and all(dict(anonymous.headers)[h] == "" for h in IDENTITY_HEADERS)


def test_a_cached_token_moving_between_routes_gets_each_routes_answer(
    decider: Decider, served_lifecycle: Lifecycle
) -> None:
    """The decision remembered for a token's last route is never reused for another route."""
    token, _ = _token(served_lifecycle)
    routes = [PREDICT, TRAIN, PREDICT, PREDICT, ("GET", "/v1/models/sentiment/predict"), TRAIN, PREDICT]
    expected = ["allowed", "insufficient_role", "allowed", "allowed", "no_route", "insufficient_role", "allowed"]
    assert [_decide(decider, token, route).reason for route in routes] == expected
    assert len(decider.cache) == 1


def test_stale_or_unloaded_revocations_fail_closed(
    decider: Decider, served_lifecycle: Lifecycle, revocations: RevocationSet
) -> None:
    token, _ = _token(served_lifecycle)
    revocations.confirmed_at = time.monotonic() - 4  # bound is 3 s
    assert (_decide(decider, token).status, _decide(decider, token).reason) == (503, "revocations_stale")
    assert _decide(decider, None, ("GET", "/healthz")).status == 200
    revocations.confirmed_at = time.monotonic()
    revocations.loaded = False
    assert _decide(decider, token).status == 503


def test_cache_keeps_checking_expiry(decider: Decider, served_lifecycle: Lifecycle, clock: Clock) -> None:
    token, _ = _token(served_lifecycle, ttl=timedelta(minutes=1))
    assert _decide(decider, token).status == 200
    assert len(decider.cache) == 1
    clock.advance(timedelta(minutes=2))
    assert _decide(decider, token).reason == "expired"


def test_a_cached_token_is_refused_as_soon_as_it_is_revoked(
    decider: Decider, served_lifecycle: Lifecycle, revocations: RevocationSet, clock: Clock
) -> None:
    """The cache reuses a "not revoked" answer only while the revocation set is unchanged."""
    token, token_id = _token(served_lifecycle)
    other, _ = _token(served_lifecycle, name="other")
    assert _decide(decider, token).status == 200 and _decide(decider, token).status == 200
    now = clock().timestamp()
    revocations.add(None, token_id, now, now)
    assert _decide(decider, token).reason == "revoked"
    assert _decide(decider, other).status == 200
    claims = jwt.decode(other.removeprefix("mlt_"), options={"verify_signature": False})
    revocations.add(claims["jti"], None, now + 30, now)  # a renewal's grace period: due in 30 s
    assert _decide(decider, other).status == 200
    clock.advance(timedelta(seconds=31))
    assert _decide(decider, other).reason == "revoked"


def test_cached_tokens_with_equal_roles_share_one_set(decider: Decider, served_lifecycle: Lifecycle) -> None:
    """Equal role and scope sets are one object each among cached tokens (two objects fewer a cached
    token for the cyclic collector to traverse); past SHARED_SETS distinct sets a token keeps its own."""
    predict, train = ("model:sentiment:predict",), ("model:sentiment:train",)

    def mint(roles: tuple[str, ...], owner: str) -> str:  # one owner each: each has a bound on active tokens
        return served_lifecycle.create(Owner(f"u-{owner}", owner), "t", list(roles)).secret

    for roles, owner in ((predict, "a"), (predict, "b"), (train, "c")):
        assert _decide(decider, mint(roles, owner)).status in (200, 403)
    a, b, c = (verified.identity for verified in decider.cache.values())
    assert a.roles == b.roles == frozenset(predict) and c.roles == frozenset(train)
    assert a.roles is b.roles and a.scopes is b.scopes and c.roles is not a.roles
    decider.shared_sets.update((frozenset({str(i)}),) * 2 for i in range(SHARED_SETS - len(decider.shared_sets)))
    both = predict + train
    for owner in ("d", "e"):
        assert _decide(decider, mint(both, owner)).status == 200
    d, e = (verified.identity for verified in list(decider.cache.values())[-2:])
    assert d.roles == e.roles == frozenset(both) and d.roles is not e.roles
    assert len(decider.shared_sets) == SHARED_SETS


def test_grant_headers_are_made_once_for_equal_grants_and_bounded(
    decider: Decider, served_lifecycle: Lifecycle
) -> None:
    """The roles, scopes and issuer headers are made once for equal grants and shared by the
    tokens that carry them; past SHARED_SETS distinct grants each token's are made anew."""
    roles = ["model:sentiment:predict", "model:vision:predict"]
    secrets = [served_lifecycle.create(Owner(f"u-{o}", o), "t", roles).secret for o in ("a", "b", "c")]
    first, second = (_decide(decider, secret) for secret in secrets[:2])
    assert all(x is y for x, y in zip(first.headers[-3:], second.headers[-3:], strict=True))
    assert dict(first.headers)["x-auth-roles"] == "model:sentiment:predict,model:vision:predict"
    assert dict(first.headers)["x-auth-token-id"] != dict(second.headers)["x-auth-token-id"]
    decider.grants.clear()
    decider.grants.update(((frozenset({str(i)}), frozenset(), "x"), ()) for i in range(SHARED_SETS))
    third = _decide(decider, secrets[2])
    assert len(decider.grants) == SHARED_SETS  # the bound holds
    assert third.headers[-3:] == first.headers[-3:] and third.headers[-3][1] is not first.headers[-3][1]


def test_cache_is_bounded_and_evicts_its_oldest_entry(decider: Decider, served_lifecycle: Lifecycle) -> None:
    decider.cache_size = 2
    tokens = [_token(served_lifecycle, name=f"t{i}")[0] for i in range(3)]
    for token in tokens[:2]:
        assert _decide(decider, token).status == 200
    assert _decide(decider, tokens[0]).status == 200  # a hit does not make an entry younger: FIFO
    assert _decide(decider, tokens[2]).status == 200
    digests = [sha256(token.encode()).digest() for token in tokens]
    assert list(decider.cache) == digests[1:]


def test_identity_header_values_are_percent_encoded(
    decider: Decider, served_lifecycle: Lifecycle, served_issuer: LocalIssuer
) -> None:
    """The lifecycle refuses control characters in names, but a signed claim may carry anything."""
    issued = served_lifecycle.create(Owner("u-zoe", "Zoë"), "t", ["model:sentiment:predict"])
    hostile = _signed(served_issuer, issued.secret, owner_name="Zoë, admin\r\nX-Evil: 1")
    headers = dict(_decide(decider, hostile).headers)
    assert headers["x-auth-owner-name"] == "Zo%C3%AB%2C admin%0D%0AX-Evil: 1"
    assert all(v.isascii() and v.isprintable() for v in headers.values())


def test_the_token_expiry_claim_bounds_a_token_whatever_its_exp(
    decider: Decider, served_lifecycle: Lifecycle, served_issuer: LocalIssuer, clock: Clock
) -> None:
    """issue 12: a client-credentials JWT carries the ML token's expiry (`token_exp`), which its own
    `exp` may outlive; the validator refuses it past that expiry, with the same leeway as `exp`."""
    token, _ = _token(served_lifecycle, ttl=timedelta(days=1))
    ml_expiry = int(clock().timestamp()) + 60
    bounded = _signed(served_issuer, token, token_exp=ml_expiry)
    assert _decide(decider, bounded).status == 200
    clock.advance(timedelta(seconds=60 + 29))
    assert _decide(decider, bounded).status == 200  # within the 30 s leeway, and cached now
    clock.advance(timedelta(seconds=1))
    assert (_decide(decider, bounded).status, _decide(decider, bounded).reason) == (401, "expired")
    assert _decide(decider, token).status == 200  # the same claims without token_exp: exp governs
    for malformed in ("soon", True, [1], {"at": 1}):
        assert (_decide(decider, _signed(served_issuer, token, token_exp=malformed)).reason) == "malformed_claim"


def test_a_revoked_credential_refuses_every_jwt_that_names_it(
    decider: Decider, served_lifecycle: Lifecycle, served_issuer: LocalIssuer, revocations: RevocationSet, clock: Clock
) -> None:
    """A renewal revokes the old client secret's credential id as a jti: every JWT fetched with it
    names it in `token_cred`, each with a jti of its own."""
    token, _ = _token(served_lifecycle)
    first, second = (_signed(served_issuer, token, token_cred="client:old", jti=f"j{i}") for i in (1, 2))
    other = _signed(served_issuer, token, token_cred="client:new", jti="j3")
    now = clock().timestamp()
    revocations.add("client:old", None, now, now)
    assert [_decide(decider, t).reason for t in (first, second, other)] == ["revoked", "revoked", "allowed"]
    assert _decide(decider, _signed(served_issuer, token, token_cred=7)).reason == "malformed_claim"


@pytest.fixture
def foreign_issuer(served_settings, store: Store, clock: Clock) -> Iterator[LocalIssuer]:
    """A second trusted issuer (its own URL; keys served like any OIDC provider's)."""
    port = free_port()
    issuer = LocalIssuer(served_settings.replace(issuer_url=f"http://127.0.0.1:{port}"), store, clock)
    with serving(issuer, port):
        yield issuer


def _two_issuer_decider(
    vsettings: ValidatorSettings, foreign: LocalIssuer, revocations: RevocationSet, clock: Clock, **raw: Any
) -> Decider:
    issuers = (*vsettings.issuers, foreign.issuer_url)
    vs = dataclasses.replace(vsettings, issuers=issuers, **raw)
    keys = KeyCache(issuers, 300, 30, 2)
    assert all(asyncio.run(keys.refresh(i)) for i in issuers)
    return Decider(vs, keys, revocations, Policy.load(DEMO_POLICY), wall=lambda: clock().timestamp())


def test_a_foreign_issuers_token_cannot_name_our_tokens_or_their_owners(
    vsettings: ValidatorSettings,
    served_lifecycle: Lifecycle,
    served_issuer: LocalIssuer,
    foreign_issuer: LocalIssuer,
    revocations: RevocationSet,
    clock: Clock,
) -> None:
    """issue 12: `token_id` and `owner` were read from any trusted issuer, so another issuer's token
    naming a local token id counted toward that token's usage and shared its rate limits."""
    victim, victim_id = _token(served_lifecycle, rate_limit=1)
    claims = tokens.segments(victim)[1]
    kid, key = foreign_issuer.keys.signing_key()
    forged = jwt.encode(
        {
            **claims,
            "iss": foreign_issuer.issuer_url,
            "sub": "svc-x",
            "jti": "foreign-1",
            "token_exp": claims["iat"] - 3600,
            "token_cred": claims["jti"],
            "limits": {"rps": 50},
        },
        key,
        algorithm="RS256",
        headers={"kid": kid},
    )
    decider = _two_issuer_decider(vsettings, foreign_issuer, revocations, clock)
    ours, theirs = _decide(decider, victim), _decide(decider, forged)
    assert (ours.status, ours.token_id, ours.limit_key) == (200, victim_id, victim_id)
    assert theirs.status == 200  # a good token of a trusted issuer; its expiry claim is not ours either
    # no usage counted, limits of its own (keyed by issuer and jti, which cannot name our buckets)
    assert (theirs.token_id, theirs.limit_key) == (None, f"{foreign_issuer.issuer_url}#foreign-1")
    aimed = jwt.encode(
        {**claims, "iss": foreign_issuer.issuer_url, "jti": victim_id}, key, algorithm="RS256", headers={"kid": kid}
    )
    assert _decide(decider, aimed).limit_key != victim_id
    headers = dict(theirs.headers)
    assert headers["x-auth-token-id"] == ""
    assert headers["x-auth-owner"] == headers["x-auth-owner-name"] == "svc-x"  # its sub, not our user
    assert headers["x-auth-owner-kind"] == ""  # not known: only our tokens name their owner's kind
    assert headers["x-auth-issuer"] == foreign_issuer.issuer_url
    # our revocations of that token id are about our token, not about the other issuer's
    served_lifecycle.revoke(victim_id, Actor.operator())
    _load_revocations(served_lifecycle.store, revocations)
    assert (_decide(decider, victim).reason, _decide(decider, forged).status) == ("revoked", 200)

    # An issuer named in token_issuers mints our tokens: its claims are ours.
    both = _two_issuer_decider(
        vsettings, foreign_issuer, revocations, clock, token_issuers=(*vsettings.issuers, foreign_issuer.issuer_url)
    )
    assert (_decide(both, forged).status, _decide(both, forged).reason) == (401, "expired")


# -- the token prefix (docs/security.md, "Recognisable tokens") ------------------------------


def test_the_prefix_is_taken_off_and_unprefixed_tokens_pass_while_accepted(
    decider: Decider, served_lifecycle: Lifecycle
) -> None:
    token, token_id = _token(served_lifecycle)
    assert token.startswith("mlt_eyJ")
    bare = token.removeprefix("mlt_")
    for sent in (token, bare, token):  # the second prefixed decision is the cached one
        d = _decide(decider, sent)
        assert (d.status, d.token_id) == (200, token_id)
    assert _decide(decider, "xyz_" + bare).reason == "malformed"  # another prefix is no prefix
    assert _decide(decider, "mlt_mlt_" + bare).reason == "malformed"


def test_refused_unprefixed_tokens_are_only_those_handed_out(
    vsettings: ValidatorSettings,
    key_cache: KeyCache,
    revocations: RevocationSet,
    served_lifecycle: Lifecycle,
    served_issuer: LocalIssuer,
    foreign_issuer: LocalIssuer,
    clock: Clock,
) -> None:
    """After the migration window: a handed-out token without the prefix is refused; a JWT fetched
    with a client-credentials secret (it names its credential) and another issuer's token are not."""
    strict = _two_issuer_decider(vsettings, foreign_issuer, revocations, clock, unprefixed_tokens="refuse")
    token, _ = _token(served_lifecycle)
    assert _decide(strict, token).status == 200
    d = _decide(strict, token.removeprefix("mlt_"))
    assert (d.status, d.reason) == (401, "unprefixed")
    fetched = _signed(
        served_issuer, token, jti="kc-jti-1", token_cred="cred-1", token_exp=tokens.segments(token)[1]["exp"]
    )
    assert _decide(strict, fetched).status == 200
    kid, key = foreign_issuer.keys.signing_key()
    theirs = jwt.encode(
        {**tokens.segments(token)[1], "iss": foreign_issuer.issuer_url, "jti": "f-1"},
        key,
        algorithm="RS256",
        headers={"kid": kid},
    )
    assert _decide(strict, theirs).status == 200


def test_a_custom_prefix_and_no_prefix(
    vsettings: ValidatorSettings,
    key_cache: KeyCache,
    revocations: RevocationSet,
    served_lifecycle: Lifecycle,
    clock: Clock,
) -> None:
    bare = _token(served_lifecycle)[0].removeprefix("mlt_")
    for prefix in ("acme_", ""):
        vs = dataclasses.replace(vsettings, token_prefix=prefix, unprefixed_tokens="refuse" if prefix else "accept")
        decider = Decider(vs, key_cache, revocations, Policy.load(DEMO_POLICY), wall=lambda: clock().timestamp())
        assert _decide(decider, prefix + bare).status == 200
    assert _decide(decider, "mlt_" + bare).reason == "malformed"  # with no prefix set, mlt_ is part of the JWT
