"""Usage counters under database faults, against the real PostgreSQL (through a TcpProxy where
the test needs PostgreSQL to hang): exactly-once batches, lock order, what the log says."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg2
import psycopg2.errors
import pytest

from tests.faults.harness import via
from tests.support.stack import TcpProxy
from token_service.validator.usage import UsageRecorder

LOGGER = "token_service.validator.usage"


@pytest.fixture
def admin(db_url: str) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(db_url)
    conn.autocommit = True
    yield conn
    conn.close()


def add_tokens(conn: psycopg2.extensions.connection, *ids: str) -> None:
    """Token rows, inserted in this order (the table's physical order)."""
    with conn.cursor() as cur:
        for token_id in ids:
            cur.execute(
                """INSERT INTO mltokens.token (id, owner_id, owner_name, subject, name, issuer, ttl_seconds,
                           issued_at, expires_at, current_jti) VALUES (%s, 'u1', 'alice', 'alice', %s, 'local',
                           60, now(), now() + interval '1 hour', %s)""",
                (token_id, token_id, "jti-" + token_id),
            )


def counts(conn: psycopg2.extensions.connection) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute("SELECT id, use_count FROM mltokens.token")
        return dict(cur.fetchall())


def test_a_flush_committed_after_its_timeout_is_not_counted_again(
    db_url: str, admin, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL hangs: the UPDATE commits but its answer comes after the flush gave up. The
    retry sends the same batch, which changes nothing; the counts made meanwhile still count."""
    add_tokens(admin, "t1")
    port = urlsplit(db_url).port
    proxy = TcpProxy(port)
    caplog.set_level(logging.WARNING, LOGGER)

    async def scenario() -> UsageRecorder:
        recorder = UsageRecorder(via(db_url, proxy, port), interval=3600, timeout=1)
        recorder.record("t1", time.time())
        await recorder.flush()  # connected, statement prepared: the next flush is one round trip
        assert counts(admin) == {"t1": 1}
        for _ in range(200):
            recorder.record("t1", time.time())
        proxy.delay = 3  # every answer from PostgreSQL held 3 s: the flush times out after 1 s
        await recorder.flush()
        assert recorder.unconfirmed is not None
        deadline = time.monotonic() + 5
        while counts(admin) != {"t1": 201}:  # ... yet PostgreSQL committed it
            assert time.monotonic() < deadline, counts(admin)
            await asyncio.sleep(0.1)
        for _ in range(5):
            recorder.record("t1", time.time())
        proxy.delay = 0
        await recorder.flush()
        await recorder.close()
        return recorder

    try:
        recorder = asyncio.run(scenario())
    finally:
        proxy.close()
    assert recorder.unconfirmed is None and not recorder.pending
    assert counts(admin) == {"t1": 206}
    failures = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(failures) == 1 and "(TimeoutError: " in failures[0], failures


def test_a_flush_locks_token_rows_in_id_order(db_url: str, admin) -> None:
    """With `b` locked elsewhere, a flush of b and a holds a's lock while it waits for b's: it
    takes them in id order, whatever the order of the table or of its own batch."""
    add_tokens(admin, "b", "a")
    blocker = psycopg2.connect(db_url)
    probe = psycopg2.connect(db_url)

    async def scenario() -> None:
        recorder = UsageRecorder(db_url, interval=3600)
        recorder.record("b", time.time())
        recorder.record("a", time.time())
        with blocker.cursor() as cur:
            cur.execute("SELECT id FROM mltokens.token WHERE id = 'b' FOR UPDATE")
        flush = asyncio.create_task(recorder.flush())
        deadline = time.monotonic() + 5
        while not _waiting_for_a_lock(admin):
            assert time.monotonic() < deadline, "the flush never waited for b"
            await asyncio.sleep(0.05)
        with probe.cursor() as cur, pytest.raises(psycopg2.errors.LockNotAvailable):
            cur.execute("SELECT id FROM mltokens.token WHERE id = 'a' FOR UPDATE NOWAIT")
        probe.rollback()
        blocker.rollback()
        await flush
        await recorder.close()
        assert recorder.unconfirmed is None

    try:
        asyncio.run(scenario())
    finally:
        blocker.close()
        probe.close()
    assert counts(admin) == {"a": 1, "b": 1}


def _waiting_for_a_lock(conn: psycopg2.extensions.connection) -> bool:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'mltokens%%' AND wait_event_type = 'Lock'"
        )
        return cur.fetchone()[0] > 0


def test_two_workers_flushing_overlapping_tokens_in_opposite_order_never_deadlock(
    db_url: str, admin, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [f"t{i:03}" for i in range(60)]
    add_tokens(admin, *ids)
    with admin.cursor() as cur:  # a table of some size: rows are found by index, in the batch's order
        cur.execute("""INSERT INTO mltokens.token (id, owner_id, owner_name, subject, name, issuer, ttl_seconds,
                       issued_at, expires_at, current_jti) SELECT 'x' || i, 'u2', 'bob', 'bob', 'x' || i, 'local',
                       60, now(), now() + interval '1 hour', 'jti-x' || i FROM generate_series(1, 5000) AS i""")
        cur.execute("ANALYZE mltokens.token")
    caplog.set_level(logging.WARNING, LOGGER)
    rounds = 30

    async def scenario() -> None:
        workers = [UsageRecorder(db_url, interval=3600), UsageRecorder(db_url, interval=3600)]
        for _ in range(rounds):
            for recorder, order in zip(workers, (ids, ids[::-1]), strict=True):
                for token_id in order:
                    recorder.record(token_id, time.time())
            await asyncio.gather(*(r.flush() for r in workers))
        for recorder in workers:
            await recorder.flush()  # anything a failed round left unconfirmed
            await recorder.close()

    asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == []
    assert {k: v for k, v in counts(admin).items() if k in ids} == dict.fromkeys(ids, 2 * rounds)
