"""Store: migrations up and down, beside CKAN's tables, and NOTIFY on revocation."""

from __future__ import annotations

import ast
import json
import select as io_select
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import inspect, text

from token_service import errors
from token_service.issuers import Owner
from token_service.lifecycle import Actor, Lifecycle
from token_service.store import NOTIFY_CHANNEL, SCHEMA, Store
from token_service.store.db import MIGRATIONS, head_revision

TABLES = {
    "alembic_version",
    "token",
    "revocation",
    "audit_event",
    "signing_key",
    "usage_batch",
    "usage_daily",
    "expiry_notice",
}


def mltokens_tables(store: Store) -> set[str]:
    return set(inspect(store.engine).get_table_names(schema=SCHEMA))


def test_upgrade_and_downgrade_on_an_empty_database(empty_db_url: str):
    store = Store(empty_db_url)
    assert store.revision() is None
    store.upgrade()
    assert store.revision() == head_revision()
    assert mltokens_tables(store) == TABLES
    store.downgrade()
    assert store.revision() is None
    assert mltokens_tables(store) == {"alembic_version"}
    store.upgrade()  # and up again
    assert mltokens_tables(store) == TABLES
    store.dispose()


def test_upgrade_beside_ckans_own_tables(empty_db_url: str, tmp_path: Path):
    """Real CKAN initialises its schema first; ours goes beside it and leaves it alone."""
    ini = tmp_path / "ckan.ini"
    ini.write_text(
        textwrap.dedent(f"""
        [app:main]
        use = egg:ckan
        sqlalchemy.url = {empty_db_url}
        ckan.site_url = http://localhost:5000
        ckan.redis.url = redis://127.0.0.1:6379/1
        solr_url = http://127.0.0.1:8983/solr/ckan
        ckan.plugins =
        beaker.session.secret = x
        SECRET_KEY = test-secret
        WTF_CSRF_SECRET_KEY = test-csrf
        ckan.storage_path = {tmp_path}

        # CKAN 2.11's `ckan` command reads these sections with logging.config.fileConfig.
        [loggers]
        keys = root

        [handlers]
        keys = console

        [formatters]
        keys = generic

        [logger_root]
        level = WARNING
        handlers = console

        [handler_console]
        class = StreamHandler
        args = (sys.stderr,)
        formatter = generic

        [formatter_generic]
        format = %(levelname)s [%(name)s] %(message)s
    """)
    )
    ckan = Path(sys.executable).with_name("ckan")
    if not ckan.exists():
        pytest.fail("CKAN is not installed in this environment: install with `pip install -e .[test,ckan212]`")
    subprocess.run([str(ckan), "-c", str(ini), "db", "init"], check=True, capture_output=True, timeout=240)
    store = Store(empty_db_url)
    ckan_tables = set(inspect(store.engine).get_table_names())
    assert {"user", "package", "api_token", "alembic_version"} <= ckan_tables
    with store.engine.connect() as conn:
        ckan_revision = conn.execute(text("SELECT version_num FROM public.alembic_version")).scalar()
    store.upgrade()
    assert mltokens_tables(store) == TABLES
    store.downgrade()
    assert set(inspect(store.engine).get_table_names()) == ckan_tables
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM public.alembic_version")).scalar() == ckan_revision
    store.dispose()


# What an upgrade step may do: add. docs/ckan-plugin.md, "Upgrade the plugin without downtime":
# the running release keeps serving on the upgraded tables while workers are replaced.
ADDING = {"create_table", "add_column", "create_index", "create_check_constraint", "execute"}


def test_migrations_only_add_so_the_running_release_keeps_working():
    for path in sorted((MIGRATIONS / "versions").glob("[0-9]*.py")):
        module = ast.parse(path.read_text())
        [upgrade] = [f for f in module.body if isinstance(f, ast.FunctionDef) and f.name == "upgrade"]
        ops = {
            call.func.attr
            for call in ast.walk(upgrade)
            if isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id == "op"
        }
        assert ops and ops <= ADDING, f"{path.name}: {sorted(ops - ADDING)}"
        for call in ast.walk(upgrade):  # raw SQL: no DROP, no RENAME, no ALTER ... TYPE
            if isinstance(call, ast.Constant) and isinstance(call.value, str):
                assert not any(word in call.value.upper() for word in ("DROP ", "RENAME ", " TYPE ")), path.name


def listen(db_url: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(db_url)
    conn.autocommit = True
    conn.cursor().execute(f"LISTEN {NOTIFY_CHANNEL}")
    return conn


def wait_for_notifies(conn, count: int, timeout: float = 5.0) -> list:
    deadline = datetime.now() + timedelta(seconds=timeout)
    while len(conn.notifies) < count and datetime.now() < deadline:
        io_select.select([conn], [], [], 0.2)
        conn.poll()
    return list(conn.notifies)


def test_revocation_row_and_notify_arrive_together(lifecycle: Lifecycle, store: Store, db_url: str):
    token_id = lifecycle.create(Owner("u1", "alice"), "t", ["model:sentiment:predict"]).info.id
    conn = listen(db_url)
    try:
        lifecycle.revoke(token_id, Actor.operator(), "test")
        [note] = wait_for_notifies(conn, 1)
        payload = json.loads(note.payload)
        assert note.channel == NOTIFY_CHANNEL and payload["token_id"] == token_id
        with conn.cursor() as cur:  # when the notice arrives, the row is there to read
            cur.execute("SELECT jti, token_id FROM mltokens.revocation WHERE id = %s", (payload["id"],))
            assert cur.fetchone() == (payload["jti"], token_id)
        assert datetime.fromisoformat(payload["expires_at"]) > datetime.now(UTC)
    finally:
        conn.close()


def test_any_writer_notifies_and_a_rolled_back_revoke_does_not(lifecycle: Lifecycle, store: Store, db_url: str):
    token_id = lifecycle.create(Owner("u1", "alice"), "t", ["model:sentiment:predict"]).info.id
    conn = listen(db_url)
    try:
        with store.engine.begin() as db:
            db.execute(
                text(
                    "CREATE FUNCTION mltokens.fail() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'boom'; END $$"
                )
            )
            db.execute(
                text(
                    "CREATE TRIGGER zz_fail AFTER INSERT ON mltokens.revocation "
                    "FOR EACH ROW EXECUTE FUNCTION mltokens.fail()"
                )
            )
        with pytest.raises(errors.StoreUnavailable):
            lifecycle.revoke(token_id, Actor.operator())
        assert wait_for_notifies(conn, 1, timeout=0.5) == []
        with store.engine.begin() as db:
            db.execute(text("DROP TRIGGER zz_fail ON mltokens.revocation"))
            # A hand-written revocation (psql, another service) notifies just the same.
            db.execute(
                text(
                    "INSERT INTO mltokens.revocation (jti, expires_at, actor) "
                    "VALUES ('by-hand', now() + interval '1 day', 'dba')"
                )
            )
        [note] = wait_for_notifies(conn, 1)
        assert json.loads(note.payload)["jti"] == "by-hand"
    finally:
        conn.close()
