"""Last-used time and use count per token, written back in batches.

Decisions only touch a dict; every `interval` one UPDATE writes all tokens seen since
the last flush (so at most one write per token per interval). A failed flush keeps its
counts for the next one; a flush is also made at shutdown.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import asyncpg

from .revocations import APPLICATION_NAME, SCHEMA, connection_url

log = logging.getLogger(__name__)

# InternalClientError: a statement sent just after the server's FATAL, before the socket closed.
DATABASE_ERRORS = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)

UPDATE_SQL = f"""
UPDATE {SCHEMA}.token AS t
   SET use_count = t.use_count + u.n,
       last_used_at = GREATEST(COALESCE(t.last_used_at, u.at), u.at)
  FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS u(id, n, at)
 WHERE t.id = u.id
"""


class UsageRecorder:
    def __init__(self, database_url: str, interval: float) -> None:
        self.url = connection_url(database_url)
        self.interval = interval
        self.pending: dict[str, list[float]] = {}  # token id -> [count, last used (epoch)]
        self.flushes = 0
        self._conn: asyncpg.Connection | None = None

    def record(self, token_id: str, now: float) -> None:
        entry = self.pending.get(token_id)
        if entry is None:
            self.pending[token_id] = [1, now]
        else:
            entry[0] += 1
            entry[1] = now

    async def flush(self) -> None:
        """Write every pending count in one statement; on failure keep them for later."""
        if not self.pending:
            return
        batch, self.pending = self.pending, {}
        ids = list(batch)
        counts = [int(batch[i][0]) for i in ids]
        times = [datetime.fromtimestamp(batch[i][1], UTC) for i in ids]
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(
                    self.url, timeout=5, server_settings={"application_name": APPLICATION_NAME}
                )
            await self._conn.execute(UPDATE_SQL, ids, counts, times, timeout=10)
            self.flushes += 1
        except DATABASE_ERRORS as exc:
            log.warning("usage counters of %d token(s) not written (%s); retrying later", len(ids), exc)
            for token_id, (count, at) in batch.items():
                entry = self.pending.setdefault(token_id, [0, at])
                entry[0] += count
                entry[1] = max(entry[1], at)
            if self._conn is not None:
                self._conn.terminate()  # a failed connection is not closed gracefully
                self._conn = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(*DATABASE_ERRORS):
                await conn.close(timeout=2)  # gives up (and aborts) if PostgreSQL does not answer
