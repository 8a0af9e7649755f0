"""deploy/postgres/validator-grants.sql on a real PostgreSQL database migrated by
`mltokens db upgrade`: the validator's role reads revocations and writes usage
counters, and nothing else."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg2
import psycopg2.errors
import pytest

from tests.deploy.conftest import DOCKER
from token_service.store import NOTIFY_CHANNEL
from token_service.validator.revocations import LOAD_SQL
from token_service.validator.usage import UPDATE_SQL

GRANTS = (DOCKER / "postgres" / "validator-grants.sql").read_text()


@pytest.fixture
def as_validator(db_url: str) -> Iterator[psycopg2.extensions.cursor]:
    conn = psycopg2.connect(db_url)
    conn.autocommit = True
    cur = conn.cursor()
    # Roles are cluster-wide; concurrent test runs may race to create it.
    cur.execute("""DO $$ BEGIN CREATE ROLE mltokens_validator NOLOGIN;
                   EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$""")
    cur.execute(GRANTS)
    cur.execute(GRANTS)  # idempotent
    cur.execute("""INSERT INTO mltokens.token (id, owner_id, owner_name, subject, name, issuer, ttl_seconds,
                   issued_at, expires_at, current_jti) VALUES ('t1', 'u1', 'alice', 'alice', 'n', 'local', 60,
                   now(), now() + interval '1 hour', 'j1')""")
    cur.execute(
        "INSERT INTO mltokens.revocation (jti, token_id, expires_at) VALUES ('j0', 't1', now() + interval '1 hour')"
    )
    conn.autocommit = False
    cur.execute("SET ROLE mltokens_validator")
    try:
        yield cur
    finally:
        conn.rollback()
        conn.close()


def test_loads_revocations_and_listens_with_the_validators_own_queries(as_validator) -> None:
    as_validator.execute(f"LISTEN {NOTIFY_CHANNEL}")
    as_validator.execute(LOAD_SQL)
    assert [row[:2] for row in as_validator.fetchall()] == [("j0", "t1")]


def test_writes_usage_counters_with_the_validators_own_query(as_validator) -> None:
    now = datetime.now(UTC)
    as_validator.execute(f"PREPARE usage_update AS {UPDATE_SQL}")  # asyncpg's $1..$4 parameters, unchanged
    batch = str(uuid.uuid4())
    as_validator.execute("EXECUTE usage_update (%s, %s, %s, %s)", (["t1"], [3], [now], batch))
    as_validator.execute("EXECUTE usage_update (%s, %s, %s, %s)", (["t1"], [3], [now], batch))  # a retry: no-op
    as_validator.execute("EXECUTE usage_update (%s, %s, %s, %s)", (["t1"], [2], [now], str(uuid.uuid4())))
    as_validator.execute("RESET ROLE")
    as_validator.execute("SELECT use_count, last_used_at FROM mltokens.token WHERE id = 't1'")
    assert as_validator.fetchone() == (5, now)
    as_validator.execute("SELECT day, count FROM mltokens.usage_daily WHERE token_id = 't1'")
    assert as_validator.fetchall() == [(now.date(), 5)]


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO mltokens.revocation (jti, expires_at) VALUES ('x', now())",
        "DELETE FROM mltokens.revocation",
        "SELECT reason, actor FROM mltokens.revocation",
        "SELECT name, roles FROM mltokens.token",
        "UPDATE mltokens.token SET status = 'active'",
        "SELECT * FROM mltokens.signing_key",
        "SELECT * FROM mltokens.audit_event",
        "SELECT * FROM mltokens.usage_batch",
        "DELETE FROM mltokens.usage_batch",
        "DELETE FROM mltokens.usage_daily",
        "SELECT * FROM mltokens.expiry_notice",
    ],
    ids=[
        "insert-revocation",
        "delete-revocation",
        "read-revocation-reason",
        "read-token-metadata",
        "change-status",
        "read-signing-keys",
        "read-audit",
        "read-usage-batches",
        "delete-usage-batches",
        "delete-daily-usage",
        "read-expiry-notices",
    ],
)
def test_nothing_else(as_validator, statement: str) -> None:
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        as_validator.execute(statement)
