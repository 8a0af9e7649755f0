"""Last-used time, use count and daily counts per token, written back in batches, each applied exactly once.

Decisions only touch a dict; every `interval` one statement writes all tokens seen since
the last flush (so at most one write per token per interval).

A flush that fails may still have committed (the statement timed out while PostgreSQL
hung, then completed; the connection broke after the commit). So each batch carries a
random id, inserted into `usage_batch` in the same statement as the counters: retrying
the same batch, unchanged, after an unclear failure either applies it (the first attempt
did not commit) or changes nothing (it did). Counts made meanwhile wait in `pending` for
the next batch, so only one batch is ever unconfirmed. Token rows are locked in id order,
so the flushes of several workers (and `revoke_all`) never deadlock on each other.
A flush is also made at shutdown; counts still unconfirmed when the process ends are lost
(at most one interval's worth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from .revocations import APPLICATION_NAME, SCHEMA, connection_url

log = logging.getLogger(__name__)

# InternalClientError: a statement sent just after the server's FATAL, before the socket closed.
DATABASE_ERRORS = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)

# $1 token ids, $2 counts, $3 last-used times, $4 the batch id. `locked` takes the row locks in id
# order before the UPDATE touches a row; nothing is locked or changed when the batch id exists.
# `daily` adds the same counts to the token's row of the UTC day of its last use in the batch
# (a batch spans one flush interval, so a count made just before midnight may land on the next day).
UPDATE_SQL = f"""
WITH batch AS (
    INSERT INTO {SCHEMA}.usage_batch (id) VALUES ($4::uuid) ON CONFLICT DO NOTHING RETURNING 1
), locked AS (
    SELECT t.id FROM {SCHEMA}.token AS t
     WHERE t.id = ANY($1::text[]) AND EXISTS (SELECT FROM batch)
     ORDER BY t.id
       FOR UPDATE
), daily AS (
    INSERT INTO {SCHEMA}.usage_daily AS d (token_id, day, count)
    SELECT u.id, (u.at AT TIME ZONE 'UTC')::date, u.n
      FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS u(id, n, at)
     WHERE u.id IN (SELECT id FROM locked)
        ON CONFLICT (token_id, day) DO UPDATE SET count = d.count + EXCLUDED.count
)
UPDATE {SCHEMA}.token AS t
   SET use_count = t.use_count + u.n,
       last_used_at = GREATEST(COALESCE(t.last_used_at, u.at), u.at)
  FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS u(id, n, at)
 WHERE t.id = u.id AND t.id IN (SELECT id FROM locked)
"""


@dataclass(frozen=True)
class Batch:
    """Counts to write, under the id that makes writing them idempotent."""

    id: str
    token_ids: list[str]
    counts: list[int]
    times: list[datetime]

    @classmethod
    def of(cls, pending: dict[str, list[float]]) -> Batch:
        ids = sorted(pending)
        return cls(
            str(uuid.uuid4()),
            ids,
            [int(pending[i][0]) for i in ids],
            [datetime.fromtimestamp(pending[i][1], UTC) for i in ids],
        )


class UsageRecorder:
    def __init__(self, database_url: str, interval: float, timeout: float = 10.0) -> None:
        self.url = connection_url(database_url)
        self.interval = interval
        self.timeout = timeout
        self.pending: dict[str, list[float]] = {}  # token id -> [count, last used (epoch)]
        self.unconfirmed: Batch | None = None  # sent at least once, outcome unknown
        self.flushes = 0
        self._conn: asyncpg.Connection | None = None

    def record(self, token_id: str, now: float, uses: int = 1) -> None:
        """`uses` uses of a token, the last at wall time `now` (counts folded later may be older)."""
        entry = self.pending.get(token_id)
        if entry is None:
            self.pending[token_id] = [uses, now]
        else:
            entry[0] += uses
            if now > entry[1]:
                entry[1] = now

    async def flush(self) -> None:
        """Write the unconfirmed batch (unchanged) and then the pending counts; stop at the first failure."""
        while True:
            if self.unconfirmed is None:
                if not self.pending:
                    return
                self.unconfirmed, self.pending = Batch.of(self.pending), {}
            batch = self.unconfirmed
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(
                        self.url,
                        timeout=min(5.0, self.timeout),
                        server_settings={"application_name": APPLICATION_NAME},
                    )
                await self._conn.execute(
                    UPDATE_SQL, batch.token_ids, batch.counts, batch.times, batch.id, timeout=self.timeout
                )
            except DATABASE_ERRORS as exc:
                log.warning(
                    "usage counters of %d token(s) not confirmed written (%s: %s); retrying the same batch later",
                    len(batch.token_ids),
                    type(exc).__name__,
                    exc,
                )
                if self._conn is not None:
                    self._conn.terminate()  # a failed connection is not closed gracefully
                    self._conn = None
                return
            self.unconfirmed = None
            self.flushes += 1

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def close(self) -> None:
        if self.unconfirmed is not None or self.pending:
            log.warning(
                "usage counters of %d token(s) not written before shutdown",
                len(set(self.pending) | set(self.unconfirmed.token_ids if self.unconfirmed else ())),
            )
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(*DATABASE_ERRORS):
                await conn.close(timeout=2)  # gives up (and aborts) if PostgreSQL does not answer
