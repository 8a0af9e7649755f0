"""Cost of one usage flush, the validator's only database write: `python -m bench.usage_flush`.

A flush runs off the request path (validator/usage.py: a request only adds to a dict), every
`usage_flush_interval`, with one row per token seen since the last one. This times the
validator's own `UsageRecorder.flush` for `--tokens` tokens, `--rounds` times, against a fresh
database migrated by the code under test, and prints the median and p90 in milliseconds. To
compare two versions, run it with each one's `token_service` first on the path, e.g.
`PYTHONPATH=../main python -m bench.usage_flush` for main.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import psycopg2

from tests.support import pg
from token_service.store import Store
from token_service.validator.usage import UsageRecorder


def add_tokens(db_url: str, count: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO mltokens.token (id, owner_id, owner_name, subject, name, issuer, ttl_seconds,
                   issued_at, expires_at, current_jti) VALUES (%s, 'u', 'u', 'u', 'n', 'local', 60, now(),
                   now() + interval '1 day', %s)""",
            [(i, "jti-" + i) for i in ids],
        )
    return ids


async def flushes(db_url: str, ids: list[str], rounds: int) -> list[float]:
    recorder = UsageRecorder(db_url, interval=3600)
    times = []
    for _ in range(rounds + 1):  # the first opens the connection: not counted
        now = time.time()
        for token_id in ids:
            recorder.record(token_id, now)
        started = time.perf_counter()
        await recorder.flush()
        times.append((time.perf_counter() - started) * 1000)
    await recorder.close()
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    with pg.database(prefix="mlt_bench") as db_url:
        store = Store(db_url)
        store.upgrade()
        store.dispose()
        ids = add_tokens(db_url, args.tokens)
        times = asyncio.run(flushes(db_url, ids, args.rounds))
    p90 = statistics.quantiles(times, n=10)[-1]
    print(f"flush of {args.tokens} tokens: median {statistics.median(times):.2f} ms, p90 {p90:.2f} ms")


if __name__ == "__main__":
    main()
