"""The recognisable token format, rotation's grace period on the token's record, and leak
reports (revocation by whoever finds a token, mailed to the owner later): real PostgreSQL."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta

import jwt
import pytest
from sqlalchemy import select

from tests.support.clock import Clock
from tests.support.people import ALICE, AS_ALICE, PREDICT
from tests.validator import tokens
from tests.validator.tokens import attacker_key, resign
from token_service.errors import ConfigError, InvalidInput
from token_service.leaks import KEYS_REFETCH, Found, LeakReports
from token_service.lifecycle import LeakNotice, Lifecycle
from token_service.store import AuditEvent, Store
from token_service.token_format import check_prefix, scanner_pattern, split_prefix
from token_service.validator.settings import ValidatorSettings

FOUND = {"token": "", "type": "mltokens_token", "url": "https://github.com/o/r/blob/abc/app.py#L3", "source": "commit"}


@pytest.fixture
def grace_lifecycle(settings, store: Store, issuer, clock: Clock) -> Lifecycle:
    return Lifecycle(settings.replace(rotate_grace=timedelta(minutes=10)), store, issuer, clock)


def found(token: str) -> Found:
    return Found.of({**FOUND, "token": token}, "secret scanning")


def audit(store: Store, token_id: str) -> list[AuditEvent]:
    with store.transaction() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.token_id == token_id).order_by(AuditEvent.id)))


# -- the format ---------------------------------------------------------------------


def test_scanner_pattern_finds_issued_tokens_in_text_and_nothing_else(lifecycle: Lifecycle):
    pattern = re.compile(scanner_pattern())
    tokens = [lifecycle.create(ALICE, f"t{i}", [PREDICT]).secret for i in range(3)]
    text = f'API_TOKEN="{tokens[0]}"\nheaders = {{"Authorization": "Bearer {tokens[1]}"}}\n{tokens[2]},'
    assert pattern.findall(text) == tokens
    bare = [split_prefix(t, "mlt_")[0] for t in tokens]
    assert all(not t.startswith("mlt_") for t in bare)
    assert pattern.findall(" ".join(bare)) == []  # a JWT without the prefix is not ours to claim
    assert pattern.findall(f"xmlt_{bare[0]} _mlt_{bare[1]}") == []  # the prefix inside a longer word
    assert pattern.findall("mlt_eyJhbGciOi.eyJzdWIiOi.short") == []  # no real signature


@pytest.mark.parametrize(
    "prefix, ok",
    [
        ("mlt_", True),
        ("", True),
        ("acme2_", True),
        ("mlt", False),
        ("ml-t_", False),
        ("a" * 16 + "_", False),
        ("mlt_\n", False),
    ],
)
def test_prefix_setting_check(prefix: str, ok: bool):
    assert (check_prefix(prefix) is None) == ok


def test_another_prefix_and_none(settings, store: Store, issuer, clock: Clock):
    other = Lifecycle(settings.replace(token_prefix="acme_"), store, issuer, clock).create(ALICE, "a", [PREDICT])
    assert re.fullmatch(scanner_pattern("acme_"), other.secret)
    plain = Lifecycle(settings.replace(token_prefix=""), store, issuer, clock).create(ALICE, "b", [PREDICT])
    assert plain.secret.startswith("eyJ") and jwt.get_unverified_header(plain.secret)["alg"] == "RS256"


# -- rotation -------------------------------------------------------------------------


def test_rotate_keeps_the_previous_token_for_the_grace_period(grace_lifecycle: Lifecycle, store: Store, clock: Clock):
    first = grace_lifecycle.create(ALICE, "svc", [PREDICT])
    assert first.info.previous_valid_until is None
    rotated = grace_lifecycle.rotate(first.info.id, AS_ALICE)
    assert rotated.secret != first.secret and rotated.secret.startswith("mlt_")
    until = clock() + timedelta(minutes=10)
    assert rotated.info.previous_valid_until == until
    assert grace_lifecycle.show(first.info.id, AS_ALICE).previous_valid_until == until
    assert [t.previous_valid_until for t in grace_lifecycle.list(AS_ALICE)] == [until]
    old_jti = jwt.decode(first.secret[4:], options={"verify_signature": False})["jti"]
    assert store.revocation_for(old_jti, None, clock()) is None
    assert store.revocation_for(old_jti, None, until) is not None
    assert audit(store, first.info.id)[-1].action == "rotate" and audit(store, first.info.id)[-1].detail["grace"] == 600
    clock.advance(timedelta(minutes=10))
    assert grace_lifecycle.show(first.info.id, AS_ALICE).previous_valid_until is None


def test_renew_without_grace_shows_no_previous_token(lifecycle: Lifecycle):
    first = lifecycle.create(ALICE, "t", [PREDICT])
    assert lifecycle.renew(first.info.id, AS_ALICE).info.previous_valid_until is None


def test_a_revoked_token_has_no_previous_token(grace_lifecycle: Lifecycle):
    first = grace_lifecycle.create(ALICE, "t", [PREDICT])
    grace_lifecycle.rotate(first.info.id, AS_ALICE)
    assert grace_lifecycle.revoke(first.info.id, AS_ALICE).previous_valid_until is None


def test_previous_token_grace_ends_with_its_own_expiry(grace_lifecycle: Lifecycle, clock: Clock):
    first = grace_lifecycle.create(ALICE, "t", [PREDICT], timedelta(minutes=5))
    rotated = grace_lifecycle.rotate(first.info.id, AS_ALICE, timedelta(days=1))
    assert rotated.info.previous_valid_until == first.info.expires_at  # before the 10 minutes are up


# -- leak reports ---------------------------------------------------------------------


def test_a_reported_token_is_revoked_with_where_it_was_found(lifecycle: Lifecycle, store: Store):
    issued = lifecycle.create(ALICE, "leaky", [PREDICT])
    assert LeakReports(lifecycle).report(found(issued.secret)) is True
    info = lifecycle.show(issued.info.id, AS_ALICE)
    assert info.status == "revoked" and info.revoke_reason == "reported leaked"
    event = audit(store, issued.info.id)[-1]
    assert event.action == "leak_reported"
    assert event.detail == {
        **{k: v for k, v in FOUND.items() if k != "token"},
        "reporter": "secret scanning",
        "token_string": "current",
    }
    assert issued.secret not in str(event.detail)
    assert LeakReports(lifecycle).report(found(issued.secret)) is False  # once is enough


def test_an_unprefixed_token_can_be_reported_too(lifecycle: Lifecycle):
    issued = lifecycle.create(ALICE, "leaky", [PREDICT])
    assert LeakReports(lifecycle).report(found(issued.secret.removeprefix("mlt_"))) is True


def test_a_reported_previous_token_ends_its_grace_and_spares_the_new_one(
    grace_lifecycle: Lifecycle, store: Store, clock: Clock
):
    first = grace_lifecycle.create(ALICE, "svc", [PREDICT])
    rotated = grace_lifecycle.rotate(first.info.id, AS_ALICE)
    assert LeakReports(grace_lifecycle).report(found(first.secret)) is True
    old_jti = jwt.decode(first.secret[4:], options={"verify_signature": False})["jti"]
    assert store.revocation_for(old_jti, None, clock()) is not None  # at once, not after the grace
    info = grace_lifecycle.show(first.info.id, AS_ALICE)
    assert info.status == "active" and info.previous_valid_until is None
    assert audit(store, first.info.id)[-1].detail["token_string"] == "previous"
    new_jti = jwt.decode(rotated.secret[4:], options={"verify_signature": False})["jti"]
    assert store.revocation_for(new_jti, first.info.id, clock()) is None


@pytest.mark.parametrize(
    "make",
    [
        lambda issued: "mlt_not-a-token",
        lambda issued: "",  # Found refuses it before; see test_found_checks_its_fields
        lambda issued: resign(issued.secret.removeprefix("mlt_"), attacker_key()),  # forged: same claims, other key
        lambda issued: issued.secret[:-4] + "AAAA",  # signature changed
        # our key id with an algorithm its key cannot do: PyJWT raised InvalidKeyError, no token error
        lambda issued: tokens.assemble(
            {**tokens.segments(issued.secret)[0], "alg": "ES256"}, tokens.segments(issued.secret)[1], "c2ln"
        ),
    ],
)
def test_strings_that_are_not_working_tokens_revoke_nothing(lifecycle: Lifecycle, store: Store, make):
    issued = lifecycle.create(ALICE, "t", [PREDICT])
    string = make(issued)
    if string:
        assert LeakReports(lifecycle).report(found(string)) is False
    assert lifecycle.show(issued.info.id, AS_ALICE).status == "active"
    assert [e.action for e in audit(store, issued.info.id)] == ["create"]


def test_an_expired_or_renewed_token_is_not_reported(lifecycle: Lifecycle, clock: Clock):
    old = lifecycle.create(ALICE, "t", [PREDICT])
    lifecycle.renew(old.info.id, AS_ALICE)  # no grace: the old string is dead already
    assert LeakReports(lifecycle).report(found(old.secret)) is False
    assert lifecycle.show(old.info.id, AS_ALICE).status == "active"
    short = lifecycle.create(ALICE, "short", [PREDICT], timedelta(minutes=1))
    clock.advance(timedelta(minutes=2))
    assert LeakReports(lifecycle).report(found(short.secret)) is False


@pytest.mark.parametrize(
    "item, field",
    [
        ("a string", "token"),
        ({"url": "x"}, "token"),
        ({"token": 42}, "token"),
        ({"token": "x" * 8193}, "token"),
        ({"token": "mlt_ü"}, "token"),
        ({"token": "t", "url": "a\nb"}, "url"),
        ({"token": "t", "url": "u" * 2001}, "url"),
        ({"token": "t", "source": ["commit"]}, "source"),
        ({"token": "t", "type": "\u202e"}, "type"),
    ],
)
def test_found_checks_its_fields(item, field: str):
    with pytest.raises(InvalidInput) as raised:
        Found.of(item, "r")
    assert raised.value.field == field


def test_keys_are_fetched_once_per_interval(lifecycle: Lifecycle):
    now = [1000.0]
    reports = LeakReports(lifecycle, clock=lambda: now[0])
    fetches = []
    fetch = reports.keys.fetch
    reports.keys.fetch = lambda: fetches.append(1) or fetch()
    a, b = (lifecycle.create(ALICE, n, [PREDICT]) for n in ("a", "b"))
    reports.report(found(a.secret))
    reports.report(found("mlt_" + jwt.encode({"x": 1}, "k" * 32, headers={"kid": "unknown"})))
    reports.report(found(b.secret))
    assert len(fetches) == 1  # an unknown kid within KEYS_REFETCH does not fetch again
    now[0] += KEYS_REFETCH
    reports.report(found("mlt_" + jwt.encode({"x": 1}, "k" * 32, headers={"kid": "unknown"})))
    assert len(fetches) == 2


# -- notices --------------------------------------------------------------------------


def test_leak_notices_go_out_once_each(lifecycle: Lifecycle, settings, store: Store, issuer, clock: Clock):
    issued = [lifecycle.create(ALICE, n, [PREDICT]) for n in ("one", "two")]
    for i in issued:
        LeakReports(lifecycle).report(found(i.secret))
    sent: list[LeakNotice] = []
    assert lifecycle.leak_notices(sent.append) == 2
    assert [(n.token_name, n.owner_id, n.url, n.source, n.found_by) for n in sent] == [
        (name, ALICE.id, FOUND["url"], "commit", "secret scanning") for name in ("one", "two")
    ]
    assert lifecycle.leak_notices(sent.append) == 0  # a second run (or another replica) sends nothing


def test_a_failed_notice_is_retried_by_the_next_run(lifecycle: Lifecycle):
    issued = lifecycle.create(ALICE, "t", [PREDICT])
    LeakReports(lifecycle).report(found(issued.secret))

    def fail(notice: LeakNotice) -> None:
        raise OSError("SMTP server down")

    assert lifecycle.leak_notices(fail) == 0
    sent: list[LeakNotice] = []
    assert lifecycle.leak_notices(sent.append) == 1 and sent[0].token_id == issued.info.id


def test_the_validator_takes_the_core_prefix_and_checks_its_settings(settings):
    vs = ValidatorSettings.from_mapping({"policy_file": "p.yaml"}, settings.replace(token_prefix="acme_"))
    assert (vs.token_prefix, vs.unprefixed_tokens) == ("acme_", "accept")
    for bad in ({"unprefixed_tokens": "maybe"}, {"token_prefix": "mlt-"}):
        with pytest.raises(ConfigError):
            ValidatorSettings.from_mapping({"policy_file": "p.yaml", **bad}, settings)


def test_two_runners_at_once_send_each_notice_once(lifecycle: Lifecycle):
    """Two replicas' cron jobs at the same moment: SKIP LOCKED gives each report to one of them."""
    ids = []
    for name in ("a", "b", "c"):
        issued = lifecycle.create(ALICE, name, [PREDICT])
        LeakReports(lifecycle).report(found(issued.secret))
        ids.append(issued.info.id)
    sent: list[str] = []

    def slow(notice: LeakNotice) -> None:
        sent.append(notice.token_id)
        time.sleep(0.3)  # the other runner arrives while this one holds its report

    runners = [threading.Thread(target=lifecycle.leak_notices, args=(slow,)) for _ in range(2)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    assert sorted(sent) == sorted(ids)
