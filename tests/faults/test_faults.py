"""Faults under traffic, with real processes on 127.0.0.1: PostgreSQL unreachable, a revoke
in flight during an outage, the issuer's JWKS endpoint down or slow at start and during a
key rotation, a validator started without PostgreSQL, a worker killed under load.

How each outage is made (the shared PostgreSQL server is never restarted):
- a partition: the validators reach PostgreSQL through a TcpProxy the test cuts (every
  connection dropped, new ones refused) and restores;
- a restart as clients see it: pg_terminate_backend on every backend of the test's
  database (validators' and the revoking session's);
- the issuer: reached through a proxy that is cut, or that holds every answer longer
  than the validator's `jwks_timeout` (slow).

In every test a traffic thread sends requests with a valid, a revoked, an expired, a
re-signed (forged) and an `alg: none` token to every validator, and every answer is
checked: no revoked, expired or badly signed token is ever answered 200.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psycopg2
import pytest
import requests

from tests.faults.harness import Deployment, status, traffic, via, wait_for
from tests.support import pg
from tests.support.stack import children
from tests.validator import tokens
from token_service.errors import StoreUnavailable
from token_service.lifecycle import Actor, utcnow

MAX_STALENESS = 2.0  # harness.FAST


def ready(validator: str) -> bool:
    try:
        return requests.get(validator + "/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_partition_from_postgres_under_traffic_with_a_revoke_during_it(deployment: Deployment) -> None:
    """TcpProxy partition. A revoke committed while the validators cannot hear it may be
    accepted until their data is `max_staleness` old (then 503); after that, never."""
    proxy = deployment.proxy(5432)
    url = via(deployment.db_url, proxy, 5432)
    validators = [deployment.validator("validator-a", url), deployment.validator("validator-b", url)]
    kinds = deployment.bad_tokens()
    during, during_id = deployment.token("revoked-during-partition")
    with traffic(validators, {**kinds, "revoked_during": during}) as t:
        wait_for(lambda: len(t.answers) > 50, 10, "traffic")
        proxy.cut()
        deployment.lifecycle.revoke(during_id, Actor.operator())
        committed = time.monotonic()
        for v in validators:
            wait_for(lambda v=v: status(v, kinds["valid"]) == 503, 2 * MAX_STALENESS + 2, f"503 at {v}")
        time.sleep(0.5)
        proxy.restore()
        healed = time.monotonic()
        for v in validators:
            wait_for(lambda v=v: status(v, kinds["valid"]) == 200, 10, f"200 again at {v}")
        settled = time.monotonic()
        time.sleep(0.3)
    t.assert_never_accepted({"revoked_during": committed + MAX_STALENESS})
    assert 503 in t.statuses("valid", committed)
    assert t.statuses("revoked_during", settled) == {401}
    assert t.statuses("valid", settled) == {200}
    window = [a for a in t.answers if a.kind == "revoked_during" and a.status == 200 and a.sent >= committed]
    print(
        f"revoked during the partition: {len(window)} answer(s) 200 within max_staleness, "
        f"healed after {healed - committed:.1f}s"
    )


def test_backends_terminated_while_a_revoke_is_in_flight(deployment: Deployment, db_url: str) -> None:
    """pg_terminate_backend on every backend of the database, twice, while a revoke waits on
    a row lock: (1) the revoking session is terminated too, so the revoke fails and the
    token stays active everywhere; (2) only the lock holder and the validators are
    terminated, so the revoke commits while the validators reconnect, and they must learn it."""
    validators = [deployment.validator("validator-a"), deployment.validator("validator-b")]
    kinds = deployment.bad_tokens()
    victim, victim_id = deployment.token("victim")
    dbname = db_url.rsplit("/", 1)[1]

    def hold_lock() -> psycopg2.extensions.connection:
        conn = psycopg2.connect(db_url, application_name="mlt-lock-holder")
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM mltokens.token WHERE id = %s FOR UPDATE", (victim_id,))
        return conn

    def revoke_in_thread(outcome: list[object]) -> threading.Thread:
        def run() -> None:
            try:
                deployment.lifecycle.revoke(victim_id, Actor.operator())
                outcome.append(("committed", time.monotonic()))
            except StoreUnavailable as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def waiting_on_lock() -> bool:
        conn = psycopg2.connect(pg.url("postgres"))
        try:
            with conn.cursor() as cur:
                # The revoke's SELECT … FOR UPDATE (the validators' usage UPDATE may wait on the row too).
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
                    " AND query LIKE 'SELECT%%FOR UPDATE%%'",
                    (dbname,),
                )
                waiting = cur.fetchone()[0] == 1
        finally:
            conn.close()
        assert waiting or not outcome, f"the revoke did not wait for the row lock: {outcome}"
        return waiting

    outcome: list[object] = []
    with traffic(validators, {**kinds, "victim": victim}) as t:
        wait_for(lambda: len(t.answers) > 50, 10, "traffic")
        # (1) everything terminated: the revoke fails, the token stays active.
        lock = hold_lock()
        thread = revoke_in_thread(outcome)
        wait_for(waiting_on_lock, 15, "revoke waiting on the row lock")
        pg.admin_execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'"
            " AND pid <> pg_backend_pid()"
        )
        thread.join(10)
        lock.close()
        assert len(outcome) == 1 and isinstance(outcome[0], StoreUnavailable), outcome
        assert deployment.lifecycle.show(victim_id, Actor.operator()).status == "active"
        for v in validators:
            wait_for(lambda v=v: status(v, victim) == 200, 10, f"active token accepted again at {v}")

        # (2) the lock holder and the validators terminated, the revoke commits meanwhile.
        lock = hold_lock()
        outcome.clear()
        thread = revoke_in_thread(outcome)
        wait_for(waiting_on_lock, 15, "revoke waiting on the row lock")
        pg.admin_execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'"
            " AND (application_name IN ('mltokens-validator', 'mlt-lock-holder'))"
        )
        thread.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], tuple), outcome
        committed = outcome[0][1]
        for v in validators:
            wait_for(lambda v=v: status(v, victim) == 401, MAX_STALENESS + 3, f"401 at {v}")
        learned = time.monotonic()
        time.sleep(0.5)
    t.assert_never_accepted({"victim": committed + MAX_STALENESS})
    assert t.statuses("victim", learned) == {401}
    print(f"revoke committed during reconnects: 401 at both validators {learned - committed:.2f}s later")


@pytest.mark.parametrize("fault", ["down", "slow"])
def test_jwks_down_or_slow_at_start(deployment: Deployment, fault: str) -> None:
    """The issuer proxy refuses connections, or holds its answers 3s (jwks_timeout is 1s)."""
    proxy = deployment.issuer_proxy
    kinds = deployment.bad_tokens()
    if fault == "down":
        proxy.cut()
    else:
        proxy.delay = 3.0
    validator = deployment.validator("validator", wait=False)
    with traffic([validator], kinds) as t:
        time.sleep(2.5)
        assert not ready(validator)
        assert t.statuses("valid") <= {503}, t.statuses("valid")
        proxy.restore()
        proxy.delay = 0.0
        wait_for(lambda: ready(validator), 10, "ready once the issuer answers")
        recovered = time.monotonic()
        wait_for(lambda: 200 in t.statuses("valid", recovered), 5, "valid token accepted")
    t.assert_never_accepted()
    assert 503 in t.statuses("valid")


@pytest.mark.parametrize("fault", ["down", "slow"])
def test_key_rotation_while_jwks_down_or_slow(deployment: Deployment, fault: str) -> None:
    """Keys rotate while the issuer is unreachable or slow: tokens of the old key keep
    working (last good keys), tokens of the new key are refused (never accepted on
    trust) until the JWKS can be fetched, forgeries naming the new kid never pass."""
    validator = deployment.validator("validator")
    kinds = deployment.bad_tokens()
    proxy = deployment.issuer_proxy
    if fault == "down":
        proxy.cut()
    else:
        proxy.delay = 3.0
    deployment.issuer.keys.rotate(utcnow())
    new, _ = deployment.token("new-key")
    forged_new = tokens.resign(new, tokens.attacker_key())
    with traffic([validator], {**kinds, "new_key": new, "forged_new_kid": forged_new}) as t:
        wait_for(lambda: len(t.statuses("new_key")) > 0 and len(t.answers) > 40, 20, "traffic")
        assert t.statuses("new_key") == {401}
        assert t.statuses("valid") == {200}  # signed by the old key, still published in the cached JWKS
        proxy.restore()
        proxy.delay = 0.0
        restored = time.monotonic()
        wait_for(lambda: 200 in t.statuses("new_key", restored), 10, "new key fetched")
        time.sleep(0.3)
    t.assert_never_accepted({"forged_new_kid": float("-inf")})


def test_validator_started_while_postgres_is_unreachable(deployment: Deployment) -> None:
    """TcpProxy cut before start: not ready and 503 (never a guess), then ready once reachable."""
    proxy = deployment.proxy(5432)
    kinds = deployment.bad_tokens()
    proxy.cut()
    validator = deployment.validator("validator", via(deployment.db_url, proxy, 5432), wait=False)
    with traffic([validator], kinds) as t:
        time.sleep(2.0)
        assert not ready(validator)
        assert t.statuses("valid") == {503} and t.statuses("revoked") <= {401, 503}
        proxy.restore()
        wait_for(lambda: ready(validator), 10, "ready once PostgreSQL is reachable")
        recovered = time.monotonic()
        wait_for(lambda: 200 in t.statuses("valid", recovered), 5, "valid token accepted")
        time.sleep(0.3)
    t.assert_never_accepted()
    assert t.statuses("revoked", recovered) == {401}


@pytest.mark.parametrize("server", ["lean", "granian"])
def test_worker_killed_under_load(deployment: Deployment, server: str) -> None:
    """SIGKILL one of two workers while traffic flows: the other keeps answering and the
    dead one is replaced."""
    validator = deployment.validator("validator", workers=2, server=server)
    kinds = deployment.bad_tokens()
    server = deployment.running[-1].process
    workers = children(server.pid)
    assert len(workers) == 2, workers
    with traffic([validator], kinds) as t:
        wait_for(lambda: len(t.answers) > 50, 10, "traffic")
        os.kill(workers[0], signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(2.0)
    t.assert_never_accepted()
    assert server.poll() is None, "the validator exited when one worker died"
    assert 200 in t.statuses("valid", killed + 0.5)
    wait_for(
        lambda: len(children(server.pid)) == 2 and workers[0] not in children(server.pid), 10, "a replacement worker"
    )
    after = [a.status for a in t.answers if a.sent >= killed and a.kind == "valid"]
    print(f"worker killed: {sum(s != 200 for s in after)} of {len(after)} valid-token request(s) after it not 200")
    assert status(validator, kinds["valid"]) == 200
    assert status(validator, kinds["revoked"]) == 401
