"""Daily usage, idle tokens and expiry warnings in the lifecycle, against real PostgreSQL (issue 15 items 1, 2)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from tests.support.clock import Clock
from tests.support.people import ADMIN, ALICE, AS_ALICE, AS_BOB, BOB, PREDICT
from token_service import errors
from token_service.lifecycle import Lifecycle
from token_service.store import AuditEvent, ExpiryNotice, Store, UsageDaily
from token_service.validator.usage import UsageRecorder

DAY = timedelta(days=1)
LEADS = (timedelta(days=7), DAY)


def add_daily(store: Store, token_id: str, day, count: int) -> None:
    with store.transaction() as s:
        s.add(UsageDaily(token_id=token_id, day=day, count=count))


def test_validator_batches_add_daily_counts_exactly_once(lifecycle: Lifecycle, settings, clock: Clock) -> None:
    """The validator's own flush adds each batch to the token's row of the day (retries: test_validator_grants)."""
    token = lifecycle.create(ALICE, "t", [PREDICT]).info
    recorder = UsageRecorder(settings.database_url, interval=3600)
    now = datetime.now(UTC)

    async def flush_then_flush_more() -> None:
        for _ in range(3):
            recorder.record(token.id, now.timestamp())
        await recorder.flush()
        recorder.record(token.id, now.timestamp())
        await recorder.flush()
        await recorder.close()

    asyncio.run(flush_then_flush_more())
    lifecycle.clock = lambda: now
    (usage,) = lifecycle.usage(AS_ALICE, token_id=token.id, days=2)
    assert usage.today == 4 and [c for _, c in usage.daily] == [0, 4]
    assert usage.daily[-1][0] == now.date()


def test_usage_is_zero_filled_oldest_first_and_only_the_owners(lifecycle: Lifecycle, store: Store, clock: Clock):
    mine = lifecycle.create(ALICE, "mine", [PREDICT]).info
    theirs = lifecycle.create(BOB, "theirs", [PREDICT]).info
    today = clock().date()
    add_daily(store, mine.id, today, 5)
    add_daily(store, mine.id, today - 2 * DAY, 7)
    add_daily(store, mine.id, today - 40 * DAY, 100)  # outside the period
    add_daily(store, theirs.id, today, 9)

    (usage,) = lifecycle.usage(AS_ALICE, days=3)
    assert usage.token.id == mine.id
    assert usage.daily == ((today - 2 * DAY, 7), (today - DAY, 0), (today, 5))
    assert usage.as_dict()["today"] == 5 and usage.as_dict()["daily"][0] == {"date": str(today - 2 * DAY), "count": 7}
    with pytest.raises(errors.TokenNotFound):
        lifecycle.usage(AS_ALICE, token_id=theirs.id)
    with pytest.raises(errors.NotAuthorized):
        lifecycle.usage(AS_ALICE, owner_id=BOB.id)
    assert {u.token.id for u in lifecycle.usage(ADMIN)} == {mine.id, theirs.id}


@pytest.mark.parametrize("days", [0, -1, 91, 10**30, True, 2.5, "3"])
def test_usage_period_is_bounded_by_retention(lifecycle: Lifecycle, days) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        lifecycle.usage(AS_ALICE, days=days)
    assert caught.value.field == "days"


def test_prune_keeps_usage_retention_of_daily_counts(lifecycle: Lifecycle, store: Store, clock: Clock, settings):
    token = lifecycle.create(ALICE, "t", [PREDICT]).info
    today = clock().date()
    retention = settings.usage_retention.days
    add_daily(store, token.id, today - (retention + 1) * DAY, 1)
    add_daily(store, token.id, today - (retention - 1) * DAY, 2)
    report = lifecycle.prune()
    assert report.usage_days == 1
    with store.transaction() as s:
        assert s.scalars(select(UsageDaily.count)).all() == [2]


def test_idle_lists_active_tokens_unused_and_not_created_within_the_period(
    lifecycle: Lifecycle, store: Store, clock: Clock
):
    never = lifecycle.create(ALICE, "never used", [PREDICT], timedelta(days=90)).info
    used_long_ago = lifecycle.create(BOB, "used long ago", [PREDICT], timedelta(days=90)).info
    revoked = lifecycle.create(BOB, "revoked", [PREDICT], timedelta(days=90)).info
    lifecycle.revoke(revoked.id, ADMIN)
    with store.transaction() as s:
        s.execute(
            text("UPDATE mltokens.token SET last_used_at = :at WHERE id = :id"),
            {"at": clock() + timedelta(days=5), "id": used_long_ago.id},
        )
    clock.advance(timedelta(days=40))
    fresh = lifecycle.create(ALICE, "fresh", [PREDICT]).info
    idle = lifecycle.list(ADMIN, idle=timedelta(days=30))
    assert [t.id for t in idle] == [never.id, used_long_ago.id]  # longest idle first
    assert fresh.id not in [t.id for t in lifecycle.list(ADMIN, idle=timedelta(days=30))]
    assert [t.id for t in lifecycle.list(AS_ALICE, idle=timedelta(days=30))] == [never.id]
    assert lifecycle.list(ADMIN, idle=timedelta(days=36)) == [idle[0]]


def test_expiry_notices_switch_is_the_owners_and_audited(lifecycle: Lifecycle, store: Store):
    token = lifecycle.create(ALICE, "t", [PREDICT]).info
    assert token.expiry_notices is True
    assert lifecycle.set_expiry_notices(token.id, AS_ALICE, False).expiry_notices is False
    assert lifecycle.show(token.id, AS_ALICE).expiry_notices is False
    with pytest.raises(errors.TokenNotFound):
        lifecycle.set_expiry_notices(token.id, AS_BOB, True)
    with pytest.raises(errors.InvalidInput):
        lifecycle.set_expiry_notices(token.id, AS_ALICE, "yes")
    with store.transaction() as s:
        actions = s.scalars(select(AuditEvent.action).where(AuditEvent.token_id == token.id)).all()
    assert actions == ["create", "expiry_notices"]


def test_due_notices_pick_the_most_urgent_lead_crossed_within_the_lifetime(lifecycle: Lifecycle, clock: Clock):
    long = lifecycle.create(ALICE, "30 days", [PREDICT], timedelta(days=30)).info
    short = lifecycle.create(ALICE, "3 days", [PREDICT], timedelta(days=3)).info
    off = lifecycle.create(BOB, "off", [PREDICT], timedelta(days=30)).info
    lifecycle.set_expiry_notices(off.id, AS_BOB, False)
    assert lifecycle.due_notices(LEADS) == []

    clock.advance(timedelta(days=23, seconds=1))  # 30-day token: 7 days minus a second left
    assert [(n.token.id, n.lead) for n in lifecycle.due_notices(LEADS)] == [(long.id, timedelta(days=7))]
    clock.advance(timedelta(days=6))  # both within a day: the 3-day token never had the 7-day warning
    due = {n.token.id: n.lead for n in lifecycle.due_notices(LEADS)}
    assert due == {long.id: DAY}
    assert short.id not in due  # expired already
    assert lifecycle.due_notices([]) == []


def test_a_claim_is_taken_once_and_released_when_sending_fails(lifecycle: Lifecycle, store: Store, clock: Clock):
    token = lifecycle.create(ALICE, "t", [PREDICT], timedelta(days=30)).info
    clock.advance(timedelta(days=29, hours=1))
    (notice,) = lifecycle.due_notices(LEADS)

    with pytest.raises(ConnectionError), lifecycle.claim_notice(notice, ALICE.id) as mine:
        assert mine
        raise ConnectionError("mail server down")
    with lifecycle.claim_notice(notice, ALICE.id) as mine:
        assert mine  # released by the failure: claimed again
    with lifecycle.claim_notice(notice, ALICE.id) as mine:
        assert not mine
    with lifecycle.claim_notice(notice, "another admin") as mine:
        assert mine  # per recipient

    renewed = lifecycle.renew(token.id, AS_ALICE, timedelta(days=1, hours=2)).info
    clock.advance(timedelta(hours=2))
    (again,) = lifecycle.due_notices(LEADS)
    assert again.token.expires_at == renewed.expires_at
    with lifecycle.claim_notice(notice, ALICE.id) as stale:
        assert not stale  # the old expiry's notice: nothing to claim
    with lifecycle.claim_notice(again, ALICE.id) as mine:
        assert mine  # a renewed token is warned again before its new expiry
    with store.transaction() as s:
        assert s.scalar(select(func.count()).select_from(ExpiryNotice)) == 3


def test_two_concurrent_claims_of_one_notice_send_once(lifecycle: Lifecycle, clock: Clock):
    """The second claimant waits on the first one's row, then finds it taken (or free, had it failed)."""
    lifecycle.create(ALICE, "t", [PREDICT], timedelta(days=30))
    clock.advance(timedelta(days=29, hours=1))
    (notice,) = lifecycle.due_notices(LEADS)
    first_holds = threading.Event()
    results: dict[str, bool] = {}

    def first() -> None:
        with lifecycle.claim_notice(notice, ALICE.id) as mine:
            results["first"] = mine
            first_holds.set()
            threading.Event().wait(0.5)  # "sending" while the second claimant waits

    def second() -> None:
        first_holds.wait(5)
        with lifecycle.claim_notice(notice, ALICE.id) as mine:
            results["second"] = mine

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {"first": True, "second": False}
