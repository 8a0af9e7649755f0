"""Databases for tests: each test gets its own, copied from a migrated template."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2

PG_BASE = os.environ.get("MLTOKENS_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def url(dbname: str) -> str:
    return f"{PG_BASE}/{dbname}"


def admin_execute(*statements: str) -> None:
    conn = psycopg2.connect(url("postgres"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def fresh_name(prefix: str = "mlt_test") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@contextmanager
def database(template: str | None = None, prefix: str = "mlt_test") -> Iterator[str]:
    """Create a database (optionally from a template), yield its URL, drop it."""
    name = fresh_name(prefix)
    admin_execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield url(name)
    finally:
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
