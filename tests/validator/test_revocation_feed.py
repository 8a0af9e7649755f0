"""Revocations reach running validator processes; PostgreSQL outages fail closed and resync.

Real processes: the local issuer (`mltokens issuer serve`) and validators (`mltokens
serve`). The shared PostgreSQL server cannot be restarted safely, so an outage
is simulated twice: (1) pg_terminate_backend on the validators' connections, racing a
revocation; (2) a TCP proxy between validator and PostgreSQL that the test cuts (a
network partition: PostgreSQL stays up, so revocations can commit while the validator
is away) and restores. The last tests run a RevocationFeed in-process: a revocation
raced against its full load, an unreadable notification, backends terminated at any moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from random import Random

import psycopg2
import pytest
import requests

from tests.faults.harness import ROOT, Deployment, status, wait_for
from tests.support import pg
from tests.support.stack import TcpProxy
from token_service.issuers import Owner
from token_service.lifecycle import Actor, Lifecycle
from token_service.store import NOTIFY_CHANNEL
from token_service.validator.revocations import Loader, RevocationFeed, RevocationSet, Row


def test_revocation_reaches_two_running_validators(deployment: Deployment) -> None:
    validators = [deployment.validator("validator-a"), deployment.validator("validator-b")]
    token, token_id = deployment.token("shared")
    assert [status(v, token) for v in validators] == [200, 200]
    deployment.lifecycle.revoke(token_id, Actor.operator())
    for v in validators:
        wait_for(lambda v=v: status(v, token) == 401, 2.0, f"401 at {v}")


def test_terminated_connections_resync_and_miss_no_revocation(deployment: Deployment, db_url: str) -> None:
    validator = deployment.validator("validator")
    token, token_id = deployment.token("raced")
    assert status(validator, token) == 200
    dbname = db_url.rsplit("/", 1)[1]
    pg.admin_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{dbname}' AND application_name = 'mltokens-validator'"
    )
    deployment.lifecycle.revoke(token_id, Actor.operator())  # likely while the validator is reconnecting
    wait_for(lambda: status(validator, token) == 401, 4.0, "401 after reconnect")
    log = deployment.running[-1].log_path.read_text()
    assert "revocation feed lost PostgreSQL" in log
    metrics = requests.get(validator + "/metrics", timeout=5).text
    lost = re.search(r"^mltokens_validator_revocation_feed_reconnects_total (\S+)$", metrics, re.M)
    assert lost is not None and float(lost.group(1)) >= 1


def test_partition_fails_closed_and_resyncs_what_was_revoked_meanwhile(deployment: Deployment) -> None:
    proxy = TcpProxy(5432)
    try:
        through_proxy = re.sub(r"127\.0\.0\.1:5432", f"127.0.0.1:{proxy.port}", deployment.db_url)
        assert through_proxy != deployment.db_url
        validator = deployment.validator("validator", database_url=through_proxy)
        revoked, revoked_id = deployment.token("revoked-while-away")
        kept, _ = deployment.token("kept")
        assert status(validator, revoked) == 200 and status(validator, kept) == 200

        proxy.cut()
        wait_for(lambda: status(validator, kept) == 503, 4.0, "503 once the revocation data is stale")
        assert requests.get(validator + "/readyz", timeout=5).status_code == 503
        deployment.lifecycle.revoke(revoked_id, Actor.operator())
        statuses = {status(validator, revoked) for _ in range(20)}
        assert statuses == {503}, statuses

        proxy.restore()
        wait_for(lambda: status(validator, kept) == 200, 6.0, "200 after the partition heals")
        assert status(validator, revoked) == 401
        assert requests.get(validator + "/readyz", timeout=5).status_code == 200
    finally:
        proxy.close()


def test_least_privilege_role_from_the_docs_is_enough(deployment: Deployment, db_url: str) -> None:
    """The GRANT recipe of docs/validator.md: revocations load and usage counters are written."""
    recipe = (ROOT / "docs" / "validator.md").read_text().split("```sql\n", 1)[1].split("```", 1)[0]
    role, dbname = pg.fresh_name("mlt_validator"), db_url.rsplit("/", 1)[1]
    conn = psycopg2.connect(db_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(recipe.replace("{role}", role).replace("{database}", dbname))
        token, token_id = deployment.token("counted")
        other, other_id = deployment.token("revoked")
        deployment.lifecycle.revoke(other_id, Actor.operator())
        as_role = re.sub(r"postgresql://[^@]+@", f"postgresql://{role}:change-me@", db_url)
        validator = deployment.validator("validator", database_url=as_role)
        assert status(validator, other) == 401
        assert [status(validator, token) for _ in range(3)] == [200, 200, 200]

        def counted() -> bool:
            with conn.cursor() as cur:
                cur.execute("SELECT use_count, last_used_at FROM mltokens.token WHERE id = %s", (token_id,))
                count, last_used = cur.fetchone()
            return count == 3 and last_used is not None

        wait_for(counted, 3.0, "usage counters written back")
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(f'SET ROLE "{role}"; DELETE FROM mltokens.revocation')
    finally:
        for r in deployment.running[1:]:
            r.stop()
        with conn.cursor() as cur:
            cur.execute("RESET ROLE")
            cur.execute(f'DROP OWNED BY "{role}"')
        conn.close()
        pg.admin_execute(f'DROP ROLE IF EXISTS "{role}"')


class Feed:
    """A RevocationFeed run in-process; `during_load` runs inside every full load, after its first batch."""

    def __init__(self, db_url: str, during_load: Callable[[int], None] = lambda n: None) -> None:
        feed = self

        class Hooked(RevocationSet):
            def loader(self, now: float) -> Loader:
                loader, load = super().loader(now), feed.loads
                add = loader.add

                def add_batch(rows: Iterable[Row]) -> None:
                    add(rows)
                    during_load(load)

                loader.add = add_batch  # type: ignore[method-assign]
                feed.loads += 1
                return loader

        self.revocations = Hooked()
        self.loads = self.lost = 0
        self.feed = RevocationFeed(
            db_url, self.revocations, heartbeat_interval=0.1, resync_interval=3600, on_connection_lost=self.count_lost
        )

    def count_lost(self) -> None:
        self.lost += 1

    def revoked(self, token_id: str) -> bool:
        return self.revocations.loaded and self.revocations.is_revoked("", token_id, time.time())

    def run_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        async def run() -> None:
            task = asyncio.create_task(self.feed.run())
            try:
                deadline = time.monotonic() + timeout
                while not check():
                    assert not task.done(), task
                    assert time.monotonic() < deadline, f"{what} not within {timeout}s"
                    await asyncio.sleep(0.01)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        asyncio.run(run())


def revoke(lifecycle: Lifecycle, name: str) -> str:
    token_id = lifecycle.create(Owner("u-alice", "alice"), name, ["model:sentiment:predict"]).info.id
    lifecycle.revoke(token_id, Actor.operator())
    return token_id


def test_a_revocation_committed_during_the_full_load_is_applied_after_it(db_url: str, lifecycle: Lifecycle) -> None:
    """The load's snapshot predates the revocation, so only its notification brings it;
    the notification arrives mid-load and must survive the swap of the loaded set."""
    loaded = revoke(lifecycle, "loaded")
    raced: list[str] = []
    feed = Feed(db_url, during_load=lambda n: raced or raced.append(revoke(lifecycle, "raced")))
    feed.run_until(lambda: bool(raced) and feed.revoked(raced[0]), 3.0, "the raced revocation")
    assert feed.revoked(loaded)
    assert (feed.loads, feed.lost) == (1, 0), "recovered by a resync, not by the notification"
    confirmed = feed.revocations.confirmed_at
    feed.run_until(lambda: feed.revocations.confirmed_at > confirmed + 0.3, 3.0, "heartbeats")


def test_an_unreadable_notification_forces_a_reconnect_and_resync(
    db_url: str, lifecycle: Lifecycle, caplog: pytest.LogCaptureFixture
) -> None:
    feed = Feed(db_url)
    sent: list[bool] = []

    def garbage_then_resynced() -> bool:
        if feed.revocations.loaded and not sent:
            pg_conn = psycopg2.connect(db_url)
            pg_conn.autocommit = True
            with pg_conn, pg_conn.cursor() as cur:
                cur.execute(f"NOTIFY {NOTIFY_CHANNEL}, 'not json'")
            pg_conn.close()
            sent.append(True)
        return feed.loads >= 2

    with caplog.at_level(logging.WARNING, logger="token_service.validator.revocations"):
        feed.run_until(garbage_then_resynced, 5.0, "a resync after the unreadable notification")
    assert feed.lost == 1
    assert "unreadable revocation notification" in caplog.text and "revocation feed lost PostgreSQL" in caplog.text
    token_id = revoke(lifecycle, "after")
    feed.run_until(lambda: feed.revoked(token_id), 3.0, "revocations after the resync")


def test_backends_terminated_at_any_moment_never_stop_the_feed(db_url: str, lifecycle: Lifecycle) -> None:
    """pg_terminate_backend again and again, landing at every stage of a session (connect,
    LISTEN, load, heartbeat): the feed reconnects each time, and is current once it stops."""
    feed, dbname = Feed(db_url), db_url.rsplit("/", 1)[1]
    random = Random(7)
    until = time.monotonic() + 5
    raced: list[str] = []

    def terminate_repeatedly() -> None:
        while time.monotonic() < until:
            time.sleep(random.uniform(0, 0.1))
            pg.admin_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{dbname}' AND application_name = 'mltokens-validator'"
            )

    killer = threading.Thread(target=terminate_repeatedly, daemon=True)

    def recovered() -> bool:
        if not killer.is_alive() and not raced:
            if killer.ident is None:
                killer.start()
                return False
            raced.append(revoke(lifecycle, "after-the-storm"))
        return bool(raced) and feed.revoked(raced[0])

    feed.run_until(recovered, 10.0, "a current feed after the terminations")
    assert feed.lost >= 5
