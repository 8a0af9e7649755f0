"""Lifecycle against real PostgreSQL: every operation and its error paths."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta

import jwt
import pytest
from sqlalchemy import func, select, text

from tests.support.clock import Clock
from tests.support.people import ADMIN, ALICE, AS_ALICE, AS_BOB, BOB, PREDICT, TRAIN
from token_service import errors
from token_service.issuers import ORGANIZATION, Owner
from token_service.lifecycle import Actor, Lifecycle
from token_service.store import AuditEvent, Revocation, Store, Token


def claims(token: str) -> dict:
    """The claims of a token as handed out: the prefix, then the JWT."""
    assert token.startswith("mlt_eyJ")
    return jwt.decode(token.removeprefix("mlt_"), options={"verify_signature": False})


def audit_actions(store: Store, token_id: str) -> list[str]:
    with store.transaction() as s:
        return list(s.scalars(select(AuditEvent.action).where(AuditEvent.token_id == token_id).order_by(AuditEvent.id)))


def revocations(store: Store) -> list[Revocation]:
    with store.transaction() as s:
        return list(s.scalars(select(Revocation).order_by(Revocation.id)))


def test_create_returns_the_token_once_and_stores_only_metadata(lifecycle: Lifecycle, store: Store, clock: Clock):
    issued = lifecycle.create(ALICE, "  my   notebook ", [TRAIN, PREDICT, PREDICT], timedelta(days=7))
    info = issued.info
    assert info.name == "my notebook"
    assert info.roles == (PREDICT, TRAIN)
    assert info.status == "active"
    assert info.expires_at == clock() + timedelta(days=7)
    c = claims(issued.secret)
    assert c["token_id"] == info.id and c["sub"] == ALICE.id and c["owner_name"] == "alice"
    assert c["roles"] == [PREDICT, TRAIN] and c["scope"] == f"{PREDICT} {TRAIN}"
    assert c["exp"] == int(info.expires_at.timestamp())
    with store.engine.connect() as conn:
        dump = " ".join(str(v) for row in conn.execute(text("SELECT * FROM mltokens.token")) for v in row)
    assert issued.secret not in dump and issued.secret.split(".")[2] not in dump
    assert c["jti"] in dump  # the jti is kept, the token is not
    assert audit_actions(store, info.id) == ["create"]


def test_create_uses_default_ttl(lifecycle: Lifecycle, settings, clock: Clock):
    info = lifecycle.create(ALICE, "t", [PREDICT]).info
    assert info.expires_at - clock() == settings.default_ttl


def test_an_expiry_moment_is_measured_from_the_tokens_own_issue_time(settings, store: Store, issuer, clock: Clock):
    """A date (00:00 UTC) gives exactly that expiry, even when a second ends between the request and the issue."""
    clock.now = clock.now.replace(microsecond=999_999)
    lifecycle = Lifecycle(settings, store, issuer, clock)
    midnight = datetime.combine((clock() + timedelta(days=30)).date(), time(), UTC)
    created = lifecycle.create(ALICE, "t", [PREDICT], midnight)
    assert created.info.expires_at == midnight and claims(created.secret)["exp"] == midnight.timestamp()
    clock.advance(timedelta(days=1))
    renewed = lifecycle.renew(created.info.id, AS_ALICE, midnight + timedelta(days=1))
    assert renewed.info.expires_at == midnight + timedelta(days=1)
    assert claims(renewed.secret)["exp"] == (midnight + timedelta(days=1)).timestamp()
    with pytest.raises(errors.TTLTooLong):
        lifecycle.renew(created.info.id, AS_ALICE, clock() + settings.max_ttl + timedelta(seconds=1))
    with pytest.raises(errors.InvalidInput):
        lifecycle.create(ALICE, "past", [PREDICT], clock() - timedelta(days=1))
    with pytest.raises(errors.InvalidInput, match="time zone"):  # not a TypeError from comparing the two
        lifecycle.create(ALICE, "naive", [PREDICT], midnight.replace(tzinfo=None))


@pytest.mark.parametrize(
    "kwargs, error, field",
    [
        ({"ttl": timedelta(days=91)}, errors.TTLTooLong, "ttl"),
        ({"ttl": timedelta(seconds=5)}, errors.InvalidInput, "ttl"),
        ({"roles": ["model:secret:train"]}, errors.RolesNotAllowed, "roles"),
        ({"roles": []}, errors.InvalidInput, "roles"),
        ({"name": "   "}, errors.InvalidInput, "name"),
        ({"name": "x" * 201}, errors.InvalidInput, "name"),
        ({"name": "bad\x00name"}, errors.InvalidInput, "name"),
        ({"name": "invoice\u202efdp.exe"}, errors.InvalidInput, "name"),
        ({"name": ["a list"]}, errors.InvalidInput, "name"),
        ({"name": 42}, errors.InvalidInput, "name"),
        ({"kind": []}, errors.InvalidInput, "kind"),
        ({"kind": {"a": 1}}, errors.InvalidInput, "kind"),
        ({"rate_limit": True}, errors.InvalidInput, "rate_limit"),
        ({"daily_quota": False}, errors.InvalidInput, "daily_quota"),
        ({"daily_quota": 10**30}, errors.InvalidInput, "daily_quota"),
        ({"owner": Owner("u\x00x", "x")}, errors.InvalidInput, "owner_id"),
        ({"owner": Owner("u" * 129, "x")}, errors.InvalidInput, "owner_id"),
        ({"owner": Owner("u-carol", "c" * 256)}, errors.InvalidInput, "owner_name"),
    ],
)
def test_create_refuses_bad_input_and_changes_nothing(lifecycle: Lifecycle, store: Store, kwargs, error, field):
    """Each would otherwise reach PostgreSQL (NUL, over-long text) or fail in Python (unhashable kind)."""
    args = {"owner": ALICE, "name": "ok", "roles": [PREDICT], "ttl": None} | kwargs
    extra = {k: v for k, v in args.items() if k in ("kind", "rate_limit", "daily_quota")}
    with pytest.raises(error) as caught:
        lifecycle.create(args["owner"], args["name"], args["roles"], args["ttl"], ADMIN, **extra)
    assert caught.value.field == field
    with store.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Token)) == 0
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 0


def test_too_many_active_tokens(lifecycle: Lifecycle, clock: Clock):
    for i in range(3):  # the fixture's limit
        lifecycle.create(ALICE, f"t{i}", [PREDICT], timedelta(hours=1))
    with pytest.raises(errors.TooManyTokens):
        lifecycle.create(ALICE, "one too many", [PREDICT])
    lifecycle.create(BOB, "bob is not limited by alice", [PREDICT])
    first = lifecycle.list(AS_ALICE)[-1]
    lifecycle.revoke(first.id, AS_ALICE)
    lifecycle.create(ALICE, "room again after a revoke", [PREDICT], timedelta(hours=1))
    clock.advance(timedelta(hours=2))  # expired tokens do not count either
    lifecycle.create(ALICE, "room again after expiry", [PREDICT])


def test_duplicate_active_name_is_refused(lifecycle: Lifecycle):
    lifecycle.create(ALICE, "same", [PREDICT])
    with pytest.raises(errors.InvalidInput) as caught:
        lifecycle.create(ALICE, "same", [PREDICT])
    assert caught.value.field == "name"
    lifecycle.create(BOB, "same", [PREDICT])


def test_only_owner_or_admin_may_create_for_an_owner(lifecycle: Lifecycle):
    with pytest.raises(errors.NotAuthorized):
        lifecycle.create(ALICE, "t", [PREDICT], actor=AS_BOB)
    assert lifecycle.create(ALICE, "t", [PREDICT], actor=ADMIN).info.owner_id == ALICE.id


def test_show_and_list_respect_ownership(lifecycle: Lifecycle):
    a = lifecycle.create(ALICE, "a", [PREDICT]).info
    b = lifecycle.create(BOB, "b", [PREDICT]).info
    assert lifecycle.show(a.id, AS_ALICE).id == a.id
    assert lifecycle.show(a.id, ADMIN).id == a.id
    with pytest.raises(errors.TokenNotFound):
        lifecycle.show(a.id, AS_BOB)  # someone else's token: not found, not forbidden
    with pytest.raises(errors.TokenNotFound):
        lifecycle.show("00000000-0000-0000-0000-000000000000", ADMIN)
    with pytest.raises(errors.TokenNotFound):
        lifecycle.show("not-a-uuid'; DROP TABLE x", ADMIN)
    assert [t.id for t in lifecycle.list(AS_ALICE)] == [a.id]
    assert {t.id for t in lifecycle.list(ADMIN)} == {a.id, b.id}
    assert [t.id for t in lifecycle.list(ADMIN, owner_id=BOB.id)] == [b.id]
    with pytest.raises(errors.NotAuthorized):
        lifecycle.list(AS_ALICE, owner_id=BOB.id)


def test_list_shows_expired_status_and_filters_inactive(lifecycle: Lifecycle, clock: Clock):
    short = lifecycle.create(ALICE, "short", [PREDICT], timedelta(hours=1)).info
    long_ = lifecycle.create(ALICE, "long", [PREDICT], timedelta(days=1)).info
    clock.advance(timedelta(hours=2))
    statuses = {t.id: t.status for t in lifecycle.list(AS_ALICE)}
    assert statuses == {short.id: "expired", long_.id: "active"}
    assert [t.id for t in lifecycle.list(AS_ALICE, include_inactive=False)] == [long_.id]


def test_revoke_writes_status_revocation_and_audit_together(lifecycle: Lifecycle, store: Store, clock: Clock):
    issued = lifecycle.create(ALICE, "t", [PREDICT])
    info = lifecycle.revoke(issued.info.id, AS_ALICE, "  leaked in a notebook ")
    assert info.status == "revoked" and info.revoked_by == "alice" and info.revoke_reason == "leaked in a notebook"
    [rev] = revocations(store)
    assert rev.jti == claims(issued.secret)["jti"] and rev.token_id == info.id
    assert rev.effective_at == clock() and rev.reason == "leaked in a notebook"
    assert rev.expires_at >= info.expires_at
    assert audit_actions(store, info.id) == ["create", "revoke"]


def test_revoke_errors(lifecycle: Lifecycle, store: Store):
    token_id = lifecycle.create(ALICE, "t", [PREDICT]).info.id
    with pytest.raises(errors.TokenNotFound):
        lifecycle.revoke(token_id, AS_BOB)  # not the owner
    with pytest.raises(errors.TokenNotFound):
        lifecycle.revoke("11111111-1111-1111-1111-111111111111", AS_ALICE)
    with pytest.raises(errors.InvalidInput):
        lifecycle.revoke(token_id, AS_ALICE, "x" * 501)
    assert revocations(store) == []
    lifecycle.revoke(token_id, ADMIN)
    with pytest.raises(errors.AlreadyRevoked):
        lifecycle.revoke(token_id, AS_ALICE)
    assert len(revocations(store)) == 1


@pytest.mark.parametrize(
    "reason", ["nul\x00byte", "\u202eesrever", "zero\u200bwidth", ["a"], {"a": 1}, 7, True, "x" * 501]
)
def test_a_bad_reason_is_invalid_input_and_changes_nothing(lifecycle: Lifecycle, store: Store, reason):
    """A NUL used to reach jsonb and come back as "the token store could not complete the change"."""
    token_id = lifecycle.create(ALICE, "t", [PREDICT]).info.id
    for revoke in (
        lambda: lifecycle.revoke(token_id, AS_ALICE, reason),
        lambda: lifecycle.revoke_all(ALICE.id, AS_ALICE, reason),
    ):
        with pytest.raises(errors.InvalidInput) as caught:
            revoke()
        assert caught.value.field == "reason"
    assert revocations(store) == [] and lifecycle.show(token_id, AS_ALICE).status == "active"
    assert lifecycle.revoke(token_id, AS_ALICE, "  \t ").revoke_reason is None  # blank is no reason


@pytest.mark.parametrize("owner_id", ["u\x00", "u" * 129, ["u-alice"], 7])
def test_a_bad_owner_id_is_invalid_input(lifecycle: Lifecycle, store: Store, owner_id):
    lifecycle.create(ALICE, "t", [PREDICT])
    with pytest.raises(errors.InvalidInput):
        lifecycle.list(ADMIN, owner_id)
    with pytest.raises(errors.InvalidInput):
        lifecycle.revoke_all(owner_id, ADMIN)
    assert revocations(store) == []


def test_failure_in_the_middle_of_revoke_leaves_the_token_active(lifecycle: Lifecycle, store: Store):
    token_id = lifecycle.create(ALICE, "t", [PREDICT]).info.id
    with store.engine.begin() as conn:  # a real database failure on the revocation insert
        conn.execute(
            text(
                "CREATE FUNCTION mltokens.fail() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$;"
                "CREATE TRIGGER fail BEFORE INSERT ON mltokens.revocation FOR EACH ROW EXECUTE FUNCTION mltokens.fail()"
            )
        )
    with pytest.raises(errors.StoreUnavailable) as caught:
        lifecycle.revoke(token_id, AS_ALICE, "leaked")
    assert "disk full" not in caught.value.message  # generic to the user; the cause is chained for logs
    assert "disk full" in str(caught.value.__cause__)
    info = lifecycle.show(token_id, AS_ALICE)
    assert info.status == "active" and info.revoked_at is None
    assert audit_actions(store, token_id) == ["create"]
    with store.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER fail ON mltokens.revocation"))
    assert lifecycle.revoke(token_id, AS_ALICE).status == "revoked"


def test_revoke_all(lifecycle: Lifecycle, store: Store):
    a1 = lifecycle.create(ALICE, "a1", [PREDICT]).info
    a2 = lifecycle.create(ALICE, "a2", [PREDICT]).info
    b1 = lifecycle.create(BOB, "b1", [PREDICT]).info
    lifecycle.revoke(a1.id, AS_ALICE)
    with pytest.raises(errors.NotAuthorized):
        lifecycle.revoke_all(ALICE.id, AS_BOB)
    done = lifecycle.revoke_all(ALICE.id, AS_ALICE, "offboarding")
    assert [t.id for t in done] == [a2.id]
    assert {t.id: t.status for t in lifecycle.list(ADMIN)} == {a1.id: "revoked", a2.id: "revoked", b1.id: "active"}
    assert lifecycle.revoke_all(ALICE.id, ADMIN) == []
    assert {r.token_id for r in revocations(store)} == {a1.id, a2.id}


def test_revoke_all_of_listed_ids_takes_only_the_owners_listed_tokens(lifecycle: Lifecycle, store: Store):
    a1 = lifecycle.create(ALICE, "a1", [PREDICT]).info
    a2 = lifecycle.create(ALICE, "a2", [PREDICT]).info
    b1 = lifecycle.create(BOB, "b1", [PREDICT]).info
    done = lifecycle.revoke_all(ALICE.id, AS_ALICE, "listed", ids=[a1.id, b1.id, "not-a-uuid"])
    assert [(t.id, t.revoke_reason) for t in done] == [(a1.id, "listed")]
    assert {t.id: t.status for t in lifecycle.list(ADMIN)} == {a1.id: "revoked", a2.id: "active", b1.id: "active"}
    assert lifecycle.revoke_all(ALICE.id, AS_ALICE, ids=[]) == []


def test_revoke_each_revokes_many_with_their_own_reasons_in_one_transaction(lifecycle: Lifecycle, store: Store):
    a1 = lifecycle.create(ALICE, "a1", [PREDICT]).info
    a2 = lifecycle.create(ALICE, "a2", [PREDICT]).info
    b1 = lifecycle.create(BOB, "b1", [PREDICT]).info
    kept = lifecycle.create(BOB, "kept", [PREDICT]).info
    lifecycle.revoke(a2.id, AS_ALICE, "earlier")
    reasons = {a1.id: "lost dataset x", a2.id: "never used", b1.id: "lost dataset y", "not-a-uuid": "ignored"}
    with pytest.raises(errors.NotAuthorized):  # Alice may not revoke Bob's token: nothing is revoked
        lifecycle.revoke_each(reasons, AS_ALICE)
    assert lifecycle.show(a1.id, ADMIN).status == "active"
    done = lifecycle.revoke_each(reasons, ADMIN)
    assert sorted(t.id for t in done) == sorted([a1.id, b1.id])  # a2 was revoked already: skipped
    assert {t.id: (t.status, t.revoke_reason) for t in lifecycle.list(ADMIN)} == {
        a1.id: ("revoked", "lost dataset x"),
        a2.id: ("revoked", "earlier"),
        b1.id: ("revoked", "lost dataset y"),
        kept.id: ("active", None),
    }
    assert {r.token_id: r.reason for r in revocations(store)} == {
        a1.id: "lost dataset x",
        a2.id: "earlier",
        b1.id: "lost dataset y",
    }
    assert audit_actions(store, b1.id) == ["create", "revoke"]
    assert lifecycle.revoke_each({}, ADMIN) == [] and lifecycle.revoke_each(reasons, ADMIN) == []


def test_revoke_each_checks_every_reason_before_revoking_any(lifecycle: Lifecycle, store: Store):
    a1 = lifecycle.create(ALICE, "a1", [PREDICT]).info
    a2 = lifecycle.create(ALICE, "a2", [PREDICT]).info
    with pytest.raises(errors.InvalidInput):
        lifecycle.revoke_each({a1.id: "fine", a2.id: "x" * 501}, ADMIN)
    assert revocations(store) == [] and {t.status for t in lifecycle.list(ADMIN)} == {"active"}


def test_renew_issues_a_new_jti_and_revokes_the_old_one(lifecycle: Lifecycle, store: Store, clock: Clock):
    first = lifecycle.create(ALICE, "t", [PREDICT], timedelta(days=2))
    clock.advance(timedelta(days=1))
    renewed = lifecycle.renew(first.info.id, AS_ALICE)
    old, new = claims(first.secret), claims(renewed.secret)
    assert new["token_id"] == old["token_id"] == first.info.id
    assert new["jti"] != old["jti"]
    assert renewed.info.expires_at == clock() + timedelta(days=2)  # same lifetime as before by default
    assert renewed.info.renew_count == 1 and renewed.info.status == "active"
    [rev] = revocations(store)
    assert rev.jti == old["jti"] and rev.token_id is None and rev.effective_at == clock()
    assert audit_actions(store, first.info.id) == ["create", "renew"]
    assert lifecycle.renew(first.info.id, AS_ALICE, timedelta(hours=3)).info.expires_at == clock() + timedelta(hours=3)


def test_renew_with_grace_period_delays_the_old_jti_revocation(settings, store: Store, issuer, clock: Clock):
    lifecycle = Lifecycle(settings.replace(renew_grace=timedelta(minutes=10)), store, issuer, clock)
    first = lifecycle.create(ALICE, "t", [PREDICT])
    lifecycle.renew(first.info.id, AS_ALICE)
    jti = claims(first.secret)["jti"]
    assert store.revocation_for(jti, None, clock()) is None
    assert store.revocation_for(jti, None, clock() + timedelta(minutes=10)) is not None


def test_renew_errors(lifecycle: Lifecycle):
    token_id = lifecycle.create(ALICE, "t", [PREDICT]).info.id
    with pytest.raises(errors.TokenNotFound):
        lifecycle.renew(token_id, AS_BOB)
    with pytest.raises(errors.TTLTooLong):
        lifecycle.renew(token_id, AS_ALICE, timedelta(days=365))
    with pytest.raises(errors.InvalidInput):  # zero is too short, not "keep the current lifetime"
        lifecycle.renew(token_id, AS_ALICE, timedelta(0))
    lifecycle.revoke(token_id, AS_ALICE)
    with pytest.raises(errors.TokenNotActive):
        lifecycle.renew(token_id, AS_ALICE)


def test_expired_token_may_be_renewed(lifecycle: Lifecycle, clock: Clock):
    token_id = lifecycle.create(ALICE, "t", [PREDICT], timedelta(hours=1)).info.id
    clock.advance(timedelta(days=1))
    assert lifecycle.show(token_id, AS_ALICE).status == "expired"
    assert lifecycle.renew(token_id, AS_ALICE).info.status == "active"


def test_prune(lifecycle: Lifecycle, store: Store, clock: Clock, settings):
    gone = lifecycle.create(ALICE, "expires soon", [PREDICT], timedelta(hours=1)).info
    revoked = lifecycle.create(ALICE, "revoked", [PREDICT], timedelta(days=80)).info
    kept = lifecycle.create(ALICE, "kept", [PREDICT], timedelta(days=80)).info
    lifecycle.revoke(gone.id, AS_ALICE)
    lifecycle.revoke(revoked.id, AS_ALICE)
    assert lifecycle.prune().revocations == 0  # nothing has expired yet

    clock.advance(settings.retention + timedelta(days=1))
    report = lifecycle.prune()
    # `gone` expired: its revocation is useless now and its row is past retention.
    # `revoked` was revoked long enough ago to leave the list, but its token has not
    # expired, so its revocation must stay.
    assert (report.revocations, report.tokens) == (1, 2)
    assert [t.id for t in lifecycle.list(ADMIN)] == [kept.id]
    assert [r.token_id for r in revocations(store)] == [revoked.id]


def test_prune_forgets_usage_batches_after_a_week(lifecycle: Lifecycle, store: Store, clock: Clock):
    now = clock()
    with store.engine.begin() as conn:
        for age in (timedelta(days=8), timedelta(days=6)):
            conn.execute(
                text("INSERT INTO mltokens.usage_batch (id, applied_at) VALUES (:id, :at)"),
                {"id": str(uuid.uuid4()), "at": now - age},
            )
    lifecycle.prune()
    with store.engine.connect() as conn:
        ages = conn.execute(text("SELECT :now - applied_at FROM mltokens.usage_batch"), {"now": now}).scalars().all()
    assert ages == [timedelta(days=6)]


def test_creation_rate_per_owner(settings, store: Store, issuer, clock: Clock):
    lifecycle = Lifecycle(settings.replace(max_creations_per_hour=2, max_tokens_per_owner=10), store, issuer, clock)
    first = lifecycle.create(ALICE, "a", [PREDICT]).info
    lifecycle.revoke(first.id, AS_ALICE)  # revoking does not give the creation back
    lifecycle.create(ALICE, "b", [PREDICT])
    with pytest.raises(errors.RateLimited):
        lifecycle.create(ALICE, "c", [PREDICT])
    lifecycle.create(BOB, "c", [PREDICT])  # per owner
    clock.advance(timedelta(minutes=61))
    lifecycle.create(ALICE, "c", [PREDICT])


def test_per_token_limits_are_bounded_stored_and_carried_in_the_token(lifecycle: Lifecycle, settings):
    issued = lifecycle.create(ALICE, "limited", [PREDICT], rate_limit=2.5, daily_quota=1000)
    assert (issued.info.rate_limit, issued.info.daily_quota) == (2.5, 1000)
    assert claims(issued.secret)["limits"] == {"rps": 2.5, "daily": 1000}
    renewed = lifecycle.renew(issued.info.id, AS_ALICE)
    assert claims(renewed.secret)["limits"] == {"rps": 2.5, "daily": 1000}
    plain = lifecycle.create(ALICE, "plain", [PREDICT])
    assert "limits" not in claims(plain.secret) and plain.info.rate_limit is None
    for kwargs, field in [
        ({"rate_limit": 0}, "rate_limit"),
        ({"rate_limit": settings.max_token_rate_limit + 1}, "rate_limit"),
        ({"rate_limit": "fast"}, "rate_limit"),
        ({"daily_quota": 0}, "daily_quota"),
        ({"daily_quota": settings.max_token_daily_quota + 1}, "daily_quota"),
        ({"daily_quota": "lots"}, "daily_quota"),
        ({"daily_quota": 2.5}, "daily_quota"),
        ({"rate_limit": float("nan")}, "rate_limit"),
    ]:
        with pytest.raises(errors.InvalidInput) as caught:
            lifecycle.create(ALICE, "bad", [PREDICT], **kwargs)
        assert caught.value.field == field and caught.value.also == {}
    with pytest.raises(errors.InvalidInput) as caught:  # both wrong: both reported
        lifecycle.create(ALICE, "bad", [PREDICT], rate_limit=0, daily_quota=0)
    assert caught.value.field == "rate_limit" and set(caught.value.also) == {"daily_quota"}


def test_a_callers_grantable_set_replaces_the_issuers(lifecycle: Lifecycle, store: Store):
    """The CKAN plugin passes the roles CKAN lets the owner grant (token_service never asks CKAN)."""
    with pytest.raises(errors.RolesNotAllowed):
        lifecycle.create(ALICE, "t", [TRAIN], grantable=[PREDICT])  # the issuer would allow it
    assert store_count(store) == 0
    made = lifecycle.create(ALICE, "t", ["model:churn:predict"], grantable=["model:churn:predict"])
    assert made.info.roles == ("model:churn:predict",)


def test_renewal_is_refused_when_the_owner_may_no_longer_grant_a_role(lifecycle: Lifecycle):
    first = lifecycle.create(ALICE, "t", [PREDICT, TRAIN])
    with pytest.raises(errors.RolesNotAllowed, match=TRAIN):
        lifecycle.renew(first.info.id, AS_ALICE, grantable=lambda owner: {PREDICT} if owner == ALICE else set())
    assert lifecycle.show(first.info.id, AS_ALICE).renew_count == 0
    assert lifecycle.renew(first.info.id, AS_ALICE, grantable=lambda owner: {PREDICT, TRAIN}).info.renew_count == 1


def test_active_reaching_finds_the_active_tokens_naming_a_model(lifecycle: Lifecycle):
    sentiment = lifecycle.create(ALICE, "a", [PREDICT]).info
    both = lifecycle.create(BOB, "b", [TRAIN, "model:vision:predict"]).info
    gone = lifecycle.create(BOB, "c", [PREDICT]).info
    lifecycle.create(ALICE, "d", ["model:vision:predict"])
    lifecycle.revoke(gone.id, Actor.operator())
    assert {t.id for t in lifecycle.active_reaching(["sentiment"])} == {sentiment.id, both.id}
    assert lifecycle.active_reaching(["sent"]) == [] and lifecycle.active_reaching([]) == []


def store_count(store: Store) -> int:
    with store.transaction() as session:
        return session.scalar(select(func.count()).select_from(Token))


# Organization tokens (issue 14 item 5): an owner that is no person; its admins act for it.

ML_TEAM = Owner("o-ml", "ml-team", ORGANIZATION)
OTHER_ORG = Owner("o-other", "other-team", ORGANIZATION)
ALICE_FOR_ML = Actor(ALICE.id, ALICE.name, acting_for=ML_TEAM)
BOB_FOR_ML = Actor(BOB.id, BOB.name, acting_for=ML_TEAM)
BOB_FOR_OTHER = Actor(BOB.id, BOB.name, acting_for=OTHER_ORG)


def audit_rows(store: Store, token_id: str) -> list[tuple]:
    with store.transaction() as s:
        return list(
            s.execute(
                select(AuditEvent.action, AuditEvent.actor_name, AuditEvent.owner_id, AuditEvent.owner_kind)
                .where(AuditEvent.token_id == token_id)
                .order_by(AuditEvent.id)
            ).all()
        )


def test_an_organization_token_is_the_organizations_and_outlives_its_creator(lifecycle: Lifecycle, store: Store):
    issued = lifecycle.create(ML_TEAM, "batch scoring", [PREDICT], actor=ALICE_FOR_ML)
    info = issued.info
    assert (info.owner_id, info.owner_name, info.owner_kind) == ("o-ml", "ml-team", ORGANIZATION)
    c = claims(issued.secret)
    assert (c["owner"], c["owner_name"], c["owner_kind"]) == ("o-ml", "ml-team", ORGANIZATION)
    assert c["sub"] == "o-ml"  # the organization, not alice
    assert claims(lifecycle.create(ALICE, "mine", [PREDICT]).secret)["owner_kind"] == "user"

    # alice leaves: her own tokens go (the plugin revokes them), the organization's stay, for bob to manage
    lifecycle.revoke_all(ALICE.id, ADMIN, "user deleted")
    assert lifecycle.show(info.id, BOB_FOR_ML).status == "active"
    assert [t.id for t in lifecycle.list(BOB_FOR_ML)] == [info.id]
    renewed = lifecycle.renew(info.id, BOB_FOR_ML)
    assert claims(renewed.secret)["owner_kind"] == ORGANIZATION
    lifecycle.revoke(info.id, BOB_FOR_ML, "rotated out")
    assert audit_rows(store, info.id) == [
        ("create", "alice", "o-ml", ORGANIZATION),
        ("renew", "bob", "o-ml", ORGANIZATION),
        ("revoke", "bob", "o-ml", ORGANIZATION),
    ]


def test_acting_for_an_organization_reaches_its_tokens_only(lifecycle: Lifecycle):
    team = lifecycle.create(ML_TEAM, "team", [PREDICT], actor=ALICE_FOR_ML).info
    bobs = lifecycle.create(BOB, "bob's own", [PREDICT]).info
    # an admin of another organization, the organization's admins for their own tokens, the users themselves
    for actor, token in [(BOB_FOR_OTHER, team), (BOB_FOR_ML, bobs), (AS_BOB, team), (AS_ALICE, team)]:
        for call in (lifecycle.show, lifecycle.renew, lifecycle.revoke):
            with pytest.raises(errors.TokenNotFound):
                call(token.id, actor)
    with pytest.raises(errors.NotAuthorized):
        lifecycle.list(BOB_FOR_OTHER, ML_TEAM.id, owner_kind=ORGANIZATION)
    with pytest.raises(errors.NotAuthorized):
        lifecycle.revoke_all(ML_TEAM.id, BOB_FOR_OTHER, owner_kind=ORGANIZATION)
    with pytest.raises(errors.NotAuthorized):
        lifecycle.create(ML_TEAM, "sneaky", [PREDICT], actor=BOB_FOR_OTHER)
    with pytest.raises(errors.NotAuthorized):  # a user id that happens to be the organization's: still no
        lifecycle.create(ML_TEAM, "sneaky", [PREDICT], actor=Actor(ML_TEAM.id, "ml-team"))
    assert lifecycle.list(BOB_FOR_OTHER) == [] and lifecycle.list(AS_BOB) == [lifecycle.show(bobs.id, AS_BOB)]
    assert [t.id for t in lifecycle.list(ADMIN, ML_TEAM.id, owner_kind=ORGANIZATION)] == [team.id]
    assert [t.id for t in lifecycle.revoke_all(ML_TEAM.id, ALICE_FOR_ML, owner_kind=ORGANIZATION)] == [team.id]
    assert lifecycle.show(bobs.id, AS_BOB).status == "active"


def test_the_token_limit_counts_per_organization(lifecycle: Lifecycle):
    """max_tokens_per_owner (3 here) holds for each organization, apart from its admins' own tokens."""
    for i in range(3):
        lifecycle.create(ML_TEAM, f"t{i}", [PREDICT], actor=ALICE_FOR_ML)
    with pytest.raises(errors.TooManyTokens, match="This organization already has 3 active tokens"):
        lifecycle.create(ML_TEAM, "t3", [PREDICT], actor=BOB_FOR_ML)
    first = next(t for t in lifecycle.list(ALICE_FOR_ML) if t.name == "t0")
    lifecycle.revoke(first.id, BOB_FOR_ML)  # room for one more, not for a same name
    with pytest.raises(errors.InvalidInput, match="This organization already has an active token with this name"):
        lifecycle.create(ML_TEAM, "t1", [PREDICT], actor=ALICE_FOR_ML)
    lifecycle.create(ML_TEAM, "t3", [PREDICT], actor=ALICE_FOR_ML)
    lifecycle.create(ALICE, "t0", [PREDICT])  # alice's own count and names are hers
    lifecycle.create(OTHER_ORG, "t0", [PREDICT], actor=BOB_FOR_OTHER)


@pytest.mark.parametrize("kind", ["group", "", None, ["organization"], "Organization"])
def test_an_unknown_owner_kind_is_refused_and_changes_nothing(lifecycle: Lifecycle, store: Store, kind):
    with pytest.raises(errors.InvalidInput) as caught:
        lifecycle.create(Owner("o-x", "x", kind), "t", [PREDICT], actor=ADMIN)
    assert caught.value.field == "owner_kind"
    with pytest.raises(errors.InvalidInput):
        lifecycle.list(ADMIN, "o-x", owner_kind=kind)
    with store.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Token)) == 0
