"""The in-memory revocation set, kept current by PostgreSQL LISTEN/NOTIFY.

The feed LISTENs first, then loads every unexpired revocation, so nothing committed in
between is missed (psycopg keeps notifications that arrive during the load and hands
them over afterwards). It sends a heartbeat query every `heartbeat_interval`; each
heartbeat or notification proves the set current up to the moment it was sent. After
any connection error it reconnects and resyncs in full, and it resyncs periodically.
While the set is older than `max_staleness` the validator answers 503 (fail closed).
Revocations whose `effective_at` lies ahead (renewal grace) take effect at that time.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime

import psycopg

from ..store import NOTIFY_CHANNEL, SCHEMA

log = logging.getLogger(__name__)

APPLICATION_NAME = "mltokens-validator"
LOAD_SQL = f"SELECT jti, token_id, effective_at FROM {SCHEMA}.revocation WHERE expires_at > now()"
Row = tuple[str | None, str | None, datetime]


class RevocationSet:
    """Revoked jtis and token ids; entries with a future `effective_at` wait in `pending`."""

    def __init__(self) -> None:
        self.jtis: set[str] = set()
        self.token_ids: set[str] = set()
        self.pending: dict[tuple[str, str], float] = {}
        self.loaded = False
        self.confirmed_at = float("-inf")  # monotonic time up to which the set is known current

    def __len__(self) -> int:
        return len(self.jtis) + len(self.token_ids) + len(self.pending)

    def is_revoked(self, jti: str, token_id: str | None, now: float) -> bool:
        """Whether a jti or token id is revoked at wall-clock time `now` (epoch seconds)."""
        if jti in self.jtis or (token_id is not None and token_id in self.token_ids):
            return True
        if self.pending:
            due = self.pending.get(("jti", jti), float("inf"))
            if token_id is not None:
                due = min(due, self.pending.get(("token_id", token_id), float("inf")))
            return due <= now
        return False

    def add(self, jti: str | None, token_id: str | None, effective_at: float, now: float) -> None:
        for kind, value, target in (("jti", jti, self.jtis), ("token_id", token_id, self.token_ids)):
            if not value:
                continue
            if effective_at <= now:
                target.add(value)
                self.pending.pop((kind, value), None)
            else:
                key = (kind, value)
                self.pending[key] = min(effective_at, self.pending.get(key, float("inf")))

    def replace(self, rows: Iterable[Row], now: float) -> None:
        """Swap in a full load at once, so readers never see a half-built set."""
        fresh = RevocationSet()
        for jti, token_id, effective_at in rows:
            fresh.add(jti, token_id, effective_at.timestamp(), now)
        self.jtis, self.token_ids, self.pending = fresh.jtis, fresh.token_ids, fresh.pending
        self.loaded = True

    def age(self, monotonic_now: float) -> float:
        return monotonic_now - self.confirmed_at


def connection_url(database_url: str) -> str:
    """A libpq URL from a SQLAlchemy one (`postgresql+psycopg2://…` → `postgresql://…`)."""
    scheme, sep, rest = database_url.partition("://")
    return scheme.split("+", 1)[0] + sep + rest


class RevocationFeed:
    """Keeps a RevocationSet current; run() until cancelled."""

    def __init__(
        self,
        database_url: str,
        revocations: RevocationSet,
        heartbeat_interval: float,
        resync_interval: float,
        on_sync: Callable[[], None] = lambda: None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = connection_url(database_url)
        self.revocations = revocations
        self.heartbeat_interval = heartbeat_interval
        self.resync_interval = resync_interval
        self.on_sync = on_sync
        self.wall = wall
        self.monotonic = monotonic
        self.reconnects = 0

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._session()
            except (TimeoutError, psycopg.Error, OSError) as exc:
                self.reconnects += 1
                log.warning("revocation feed lost PostgreSQL (%s: %s); reconnecting in %.1fs",
                            type(exc).__name__, str(exc).strip()[:200], backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            else:
                backoff = 0.1

    async def _session(self) -> None:
        """One connection's life: LISTEN, full load, then notifications and heartbeats."""
        timeout = max(self.heartbeat_interval, 1.0)
        conn = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                self.url, autocommit=True, application_name=APPLICATION_NAME, connect_timeout=max(2, int(timeout)),
                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=2,
            ),
            timeout + 2,
        )
        try:
            await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            await self._resync(conn, timeout)
            next_resync = self.monotonic() + self.resync_interval
            while True:
                async for notify in conn.notifies(timeout=self.heartbeat_interval):
                    self._apply(notify.payload)
                sent = self.monotonic()
                if sent >= next_resync:
                    await self._resync(conn, timeout)
                    next_resync = sent + self.resync_interval
                    continue
                await asyncio.wait_for(conn.execute("SELECT 1"), timeout)
                self.revocations.confirmed_at = sent
                self.on_sync()
        finally:
            await conn.close()

    async def _resync(self, conn: psycopg.AsyncConnection, timeout: float) -> None:
        started = self.monotonic()
        cursor = await asyncio.wait_for(conn.execute(LOAD_SQL), timeout * 10)
        rows = await cursor.fetchall()
        self.revocations.replace(rows, self.wall())
        self.revocations.confirmed_at = started
        self.on_sync()
        log.info("revocation set loaded: %d entries", len(self.revocations))

    def _apply(self, payload: str) -> None:
        try:
            data = json.loads(payload)
            effective_at = datetime.fromisoformat(data["effective_at"]).timestamp()
            jti, token_id = data.get("jti"), data.get("token_id")
        except (ValueError, KeyError, TypeError):
            log.error("unreadable revocation notification %r; forcing a resync", payload[:200])
            raise psycopg.OperationalError("unreadable notification") from None
        self.revocations.add(jti, token_id, effective_at, self.wall())
        self.revocations.confirmed_at = max(self.revocations.confirmed_at, self.monotonic())
