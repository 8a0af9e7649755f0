"""The in-memory revocation set, kept current by PostgreSQL LISTEN/NOTIFY (asyncpg).

The feed LISTENs first, then loads every unexpired revocation, so nothing committed in
between is missed. asyncpg hands notifications to a callback whenever they arrive, also
during the load; the callback only queues them, and the feed applies the queue after the
load is swapped in (a swap replaces what was applied before it). It sends a heartbeat
query every `heartbeat_interval` without a notification; each heartbeat or notification
proves the set current up to the moment it was sent. asyncpg has no libpq keepalives: a
silently dead connection is noticed by the heartbeat's timeout. After any connection
error it reconnects and resyncs in full, and it resyncs periodically.
While the set is older than `max_staleness` the validator answers 503 (fail closed).
Revocations whose `effective_at` lies ahead (renewal grace) take effect at that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from datetime import datetime
from hashlib import blake2b
from heapq import merge

import asyncpg

log = logging.getLogger(__name__)

# The same names as token_service.store (tested): not imported, so that a validator
# worker does not load SQLAlchemy and Alembic (their memory: docs/benchmarks.md, "Costs the
# code relies on").
SCHEMA = "mltokens"
NOTIFY_CHANNEL = "mltokens_revocation"

APPLICATION_NAME = "mltokens-validator"
LOAD_SQL = (
    f"SELECT jti, token_id, extract(epoch FROM effective_at)::float8 FROM {SCHEMA}.revocation WHERE expires_at > now()"
)
Row = tuple[str | None, str | None, float]
# Rows per fetch of a full load. Digesting a batch holds the event loop, so batches stay
# small: a resync under traffic delays a request by one batch's time at most (measured in
# docs/benchmarks.md, "Costs the code relies on").
LOAD_BATCH = 1000


class RevocationSet:
    """Revoked jtis and token ids, stored compactly as keyed 64-bit digests.

    A full load goes into a sorted `array('Q')` (8 bytes an entry), with an index of where
    each range of leading bits starts, so a lookup bisects a dozen entries, not all of
    them; later notifications go into a small set until the next resync. Digests are keyed
    with a per-process random salt, so nobody can aim a collision at a revocation, and
    a collision could only refuse a token, never accept one. Entries whose
    `effective_at` lies ahead (renewal grace) wait in `pending` until that time.

    `version` changes with every change of the set (a load, a notification, a pending
    entry coming due), so a caller may reuse a "not revoked" answer while it is unchanged.
    """

    def __init__(self) -> None:
        # Keyed BLAKE2b states with each kind's prefix taken in: a digest copies one, rather than
        # keying a new hash (a block compressed) per digest.
        salted = blake2b(digest_size=8, key=os.urandom(16))
        self._hashers: dict[bytes, blake2b] = {}
        for kind in (b"j:", b"t:"):
            self._hashers[kind] = hasher = salted.copy()
            hasher.update(kind)
        self.loaded_keys = array("Q")
        self.index, self.shift = bucket_index(self.loaded_keys)
        self.recent: set[int] = set()
        self.pending: dict[int, float] = {}
        self.next_due = float("inf")  # the earliest effective_at in pending
        self.version = 0
        self.loaded = False
        self.confirmed_at = float("-inf")  # monotonic time up to which the set is known current

    def __len__(self) -> int:
        return len(self.loaded_keys) + len(self.recent) + len(self.pending)

    def keys(self, jti: str | None, token_id: str | None, credential: str | None = None) -> tuple[int, ...]:
        """The digests a token is looked up by: jti and, if any, token id and credential.

        A client-credentials JWT names the credential (client secret) it was fetched with;
        a renewal revokes the old credential as if it were a jti (`j:`).
        """
        hashers = self._hashers
        keys = []
        for kind, value in ((b"j:", jti), (b"t:", token_id), (b"j:", credential)):
            if value:
                hasher = hashers[kind].copy()
                hasher.update(value.encode())
                keys.append(int.from_bytes(hasher.digest(), "little"))
        return tuple(keys)

    def version_at(self, now: float) -> int:
        """The version at wall-clock time `now` (epoch seconds), once pending entries due by then apply."""
        if now >= self.next_due:
            due = [key for key, at in self.pending.items() if at <= now]
            for key in due:
                del self.pending[key]
            self.recent.update(due)
            self.next_due = min(self.pending.values(), default=float("inf"))
            self.version += 1
        return self.version

    def any_revoked(self, keys: tuple[int, ...]) -> bool:
        """Whether any of these digests is revoked now (call `version_at` first)."""
        loaded, recent, index, shift = self.loaded_keys, self.recent, self.index, self.shift
        for key in keys:
            if key in recent:
                return True
            bucket = key >> shift
            hi = index[bucket + 1]
            i = bisect_left(loaded, key, index[bucket], hi)
            if i < hi and loaded[i] == key:
                return True
        return False

    def is_revoked(self, jti: str, token_id: str | None, now: float) -> bool:
        """Whether the jti or token id is revoked at wall-clock time `now` (epoch seconds)."""
        self.version_at(now)
        return self.any_revoked(self.keys(jti, token_id))

    def add(self, jti: str | None, token_id: str | None, effective_at: float, now: float) -> None:
        for key in self.keys(jti, token_id):
            if effective_at <= now:
                self.recent.add(key)
                self.pending.pop(key, None)
            else:
                self.pending[key] = min(effective_at, self.pending.get(key, float("inf")))
                self.next_due = min(self.next_due, effective_at)
        self.version += 1

    def replace(self, rows: Iterable[Row], now: float) -> None:
        """Swap in a full load at once, so readers never see a half-built set."""
        loader = self.loader(now)
        loader.add(rows)
        loader.commit()

    def loader(self, now: float) -> Loader:
        return Loader(self, now)

    def age(self, monotonic_now: float) -> float:
        return monotonic_now - self.confirmed_at


class Loader:
    """Builds a full load batch by batch, then swaps it in.

    Each batch is sorted on its own and kept as an `array('Q')`; commit() merges the
    sorted arrays, so no list of every key (about 40 bytes a key) ever exists.
    """

    def __init__(self, target: RevocationSet, now: float) -> None:
        self.target, self.now = target, now
        self.batches: list[array[int]] = []
        self.pending: dict[int, float] = {}

    def add(self, rows: Iterable[Row]) -> None:
        keys_of, now, pending = self.target.keys, self.now, self.pending
        keys: list[int] = []
        for jti, token_id, effective_at in rows:
            for key in keys_of(jti, token_id):
                if effective_at <= now:
                    keys.append(key)
                else:
                    pending[key] = min(effective_at, pending.get(key, float("inf")))
        keys.sort()
        self.batches.append(array("Q", keys))

    def commit(self) -> None:
        t = self.target
        keys = array("Q", merge(*self.batches))
        index, shift = bucket_index(keys)
        t.loaded_keys, t.index, t.shift, t.recent, t.pending = keys, index, shift, set(), self.pending
        t.next_due = min(self.pending.values(), default=float("inf"))
        t.version += 1
        t.loaded = True
        self.batches = []


def bucket_index(keys: array[int]) -> tuple[array[int], int]:
    """For sorted 64-bit keys: where each bucket of leading bits starts (one more entry
    closes the last), and the shift that gives a key's bucket; about 16 keys a bucket."""
    bits = max(1, min(16, len(keys).bit_length() - 4))
    shift = 64 - bits
    index = array("I", (bisect_left(keys, bucket << shift) for bucket in range(1 << bits)))
    index.append(len(keys))
    return index, shift


def _release_freed_memory() -> None:
    """Give the C heap freed by a large load back to the OS (glibc), keeping worker RSS low."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def connection_url(database_url: str) -> str:
    """A plain PostgreSQL URL from a SQLAlchemy one (`postgresql+psycopg2://…` → `postgresql://…`)."""
    scheme, sep, rest = database_url.partition("://")
    return scheme.split("+", 1)[0] + sep + rest


class FeedInterrupted(Exception):
    """The LISTEN connection closed, or a notification could not be read: reconnect and resync."""


# What ends a feed session and is answered by a reconnect and a full resync. InternalClientError:
# a query sent in the moment between the server's FATAL (pg_terminate_backend) and the
# socket's close meets asyncpg's protocol in its error state, not ConnectionDoesNotExistError.
CONNECTION_ERRORS = (
    TimeoutError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    FeedInterrupted,
)

_CLOSED = object()  # queued when the connection closes


class RevocationFeed:
    """Keeps a RevocationSet current; run() until cancelled."""

    def __init__(
        self,
        database_url: str,
        revocations: RevocationSet,
        heartbeat_interval: float,
        resync_interval: float,
        on_connection_lost: Callable[[], None] = lambda: None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = connection_url(database_url)
        self.revocations = revocations
        self.heartbeat_interval = heartbeat_interval
        self.resync_interval = resync_interval
        self.on_connection_lost = on_connection_lost
        self.wall = wall
        self.monotonic = monotonic
        self.backoff = 0.1  # doubles with each failed attempt, back to 0.1 s after a full load

    async def run(self) -> None:
        while True:
            try:
                await self._session()
            except CONNECTION_ERRORS as exc:
                self.on_connection_lost()
                log.warning(
                    "revocation feed lost PostgreSQL (%s: %s); reconnecting in %.1fs",
                    type(exc).__name__,
                    str(exc).strip()[:200],
                    self.backoff,
                )
                await asyncio.sleep(self.backoff)
                self.backoff = min(self.backoff * 2, 2.0)

    async def _session(self) -> None:
        """One connection's life: LISTEN, full load, then notifications and heartbeats."""
        timeout = max(self.heartbeat_interval, 1.0)
        # (payload, monotonic time received), or _CLOSED; filled by asyncpg's callbacks at any time
        queue: asyncio.Queue[tuple[str, float] | object] = asyncio.Queue()
        conn = await asyncpg.connect(
            self.url, timeout=max(2.0, timeout), server_settings={"application_name": APPLICATION_NAME}
        )
        try:
            conn.add_termination_listener(lambda _conn: queue.put_nowait(_CLOSED))
            await conn.add_listener(  # issues LISTEN
                NOTIFY_CHANNEL, lambda _conn, _pid, _channel, payload: queue.put_nowait((payload, self.monotonic()))
            )
            await self._resync(conn, queue, timeout)
            self.backoff = 0.1
            next_resync = self.monotonic() + self.resync_interval
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.heartbeat_interval)
                except TimeoutError:
                    item = None
                if item is not None:
                    self._apply(item)
                    self._apply_queued(queue)
                sent = self.monotonic()
                if sent >= next_resync:
                    await self._resync(conn, queue, timeout)
                    next_resync = sent + self.resync_interval
                elif item is None:
                    await conn.execute("SELECT 1", timeout=timeout)
                    self._apply_queued(queue)  # notifications sent before the heartbeat's answer
                    self.revocations.confirmed_at = max(self.revocations.confirmed_at, sent)
        except asyncio.CancelledError:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await conn.close(timeout=1)
            raise
        finally:
            if not conn.is_closed():
                conn.terminate()

    async def _resync(self, conn: asyncpg.Connection, queue: asyncio.Queue, timeout: float) -> None:
        """Reload every unexpired revocation, streamed through a server-side cursor.

        Notifications queued meanwhile are applied after the swap, in order.
        """
        started = self.monotonic()
        loader = self.revocations.loader(self.wall())

        async def load() -> None:
            async with conn.transaction():
                cursor = await conn.cursor(LOAD_SQL)
                while batch := await cursor.fetch(LOAD_BATCH):
                    loader.add(batch)

        await asyncio.wait_for(load(), timeout * 30)
        loader.commit()
        self.revocations.confirmed_at = started
        self._apply_queued(queue)
        _release_freed_memory()
        log.info("revocation set loaded: %d entries", len(self.revocations))

    def _apply_queued(self, queue: asyncio.Queue) -> None:
        while not queue.empty():
            self._apply(queue.get_nowait())

    def _apply(self, item: tuple[str, float] | object) -> None:
        if not isinstance(item, tuple):
            raise FeedInterrupted("connection closed")
        payload, received = item
        try:
            data = json.loads(payload)
            effective_at = datetime.fromisoformat(data["effective_at"]).timestamp()
            jti, token_id = data.get("jti"), data.get("token_id")
        except (ValueError, KeyError, TypeError):
            log.error("unreadable revocation notification %r; forcing a resync", payload[:200])
            raise FeedInterrupted("unreadable notification") from None
        self.revocations.add(jti, token_id, effective_at, self.wall())
        self.revocations.confirmed_at = max(self.revocations.confirmed_at, received)
