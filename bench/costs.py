"""The costs the code's comments rely on: `.venv/bin/python -m bench.costs`.

Prints what importing a library adds to a process's resident memory (each in a fresh
interpreter), and the event-loop time of digesting one batch of a revocation load.
docs/benchmarks.md ("Costs the code relies on") records the figures; comments in
token_service point there instead of quoting them.
"""

from __future__ import annotations

import subprocess
import sys
import time

from token_service.validator.revocations import LOAD_BATCH, RevocationSet

IMPORTS = {
    "SQLAlchemy + Alembic (never in a validator worker)": "sqlalchemy, alembic.command, alembic.config",
    "redis.asyncio (only when redis_url is set)": "redis.asyncio",
}
PROBE = (
    "r0 = int(open('/proc/self/statm').read().split()[1])\nimport {modules}\n"
    "print((int(open('/proc/self/statm').read().split()[1]) - r0) * 4096 / 2**20)"
)


def import_mb(modules: str) -> float:
    """Resident memory an import adds, best of three fresh interpreters."""
    runs = [
        subprocess.run(
            [sys.executable, "-c", PROBE.format(modules=modules)], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(3)
    ]
    return min(float(out) for out in runs)


def batch_ms(with_token_id: bool) -> float:
    """Best-of-50 time of digesting one LOAD_BATCH of rows (the event loop is held meanwhile)."""
    rows = [(f"{i:032x}", f"t{i:031x}" if with_token_id else None, 0.0) for i in range(LOAD_BATCH)]
    revocations, best = RevocationSet(), float("inf")
    for _ in range(50):
        loader = revocations.loader(1.0)
        started = time.perf_counter()
        loader.add(rows)
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def main() -> None:
    for label, modules in IMPORTS.items():
        print(f"import {label}: {import_mb(modules):.1f} MB")
    for with_token_id in (False, True):
        ms = batch_ms(with_token_id)
        what = "jti and token id" if with_token_id else "jti only"
        print(
            f"revocation load, a batch of {LOAD_BATCH} rows ({what}): {ms:.2f} ms, {ms * 1e3 / LOAD_BATCH:.2f} µs a row"
        )


if __name__ == "__main__":
    main()
