"""CKAN test session for ckanext-mltokens: real PostgreSQL and Redis, CKAN's pytest plugin.

Run with `python -m pytest --ckan-ini=tests/ckan/test.ini tests/ckan`. The database named
in test.ini is created when missing; CKAN's tables come from CKAN's `clean_db` fixture,
the token tables and the first signing key from our own `ckan mltokens init`.
"""
from __future__ import annotations

import configparser
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql
from sqlalchemy import text
from sqlalchemy.engine import make_url

from ckan.tests import factories
from ckan.tests.helpers import CKANCliRunner, call_action


def _ensure_database(ini: str) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ini)
    url = make_url(parser.get("app:main", "sqlalchemy.url"))
    conn = psycopg2.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, dbname="postgres"
    )
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
    finally:
        conn.close()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Before CKAN's own session start (which builds the app): make sure the database exists."""
    ini = session.config.getoption("ckan_ini", default=None)
    if ini:
        _ensure_database(ini)


@pytest.fixture(scope="session")
def mltokens_store(reset_db: Callable[[], None]) -> None:
    """CKAN's tables (once) and ours, through the real `ckan mltokens init`."""
    from ckan.common import config
    from ckan.plugins import use_plugin

    from ckanext.mltokens.cli import mltokens

    reset_db()
    with use_plugin("mltokens"):
        result = CKANCliRunner(env={"CKAN_INI": config["__file__"]}).invoke(mltokens, ["init"])
    assert result.exit_code == 0, result.output


@pytest.fixture
def clean_tokens(mltokens_store: None) -> None:
    """Empty the token tables (the signing key stays: generating one per test is slow)."""
    from ckanext.mltokens import service

    with service.lifecycle().store.transaction() as s:
        s.execute(text("TRUNCATE mltokens.token, mltokens.revocation, mltokens.audit_event"))


@pytest.fixture
def act() -> Callable[..., Any]:
    """Call an action as a user (name), with authorization checked, as over the API."""

    def call(action: str, as_user: str | None, /, **data: Any) -> Any:
        return call_action(action, context={"user": as_user or "", "ignore_auth": False}, **data)

    return call


@pytest.fixture
def user() -> dict[str, Any]:
    return factories.User()


@pytest.fixture
def other_user() -> dict[str, Any]:
    return factories.User()


@pytest.fixture
def sysadmin() -> dict[str, Any]:
    return factories.Sysadmin()


@pytest.fixture
def token_of(act: Callable[..., Any]) -> Iterator[Callable[..., dict[str, Any]]]:
    """Create a token for a user: token_of(user, name=..., roles=..., ttl=...)."""

    def create(owner: dict[str, Any], **data: Any) -> dict[str, Any]:
        data.setdefault("name", "notebook")
        data.setdefault("roles", ["model:sentiment:predict"])
        return act("mltoken_create", owner["name"], **data)

    yield create


def pytest_configure(config: pytest.Config) -> None:
    """Markers of CKAN's pytest plugin, declared for --strict-markers."""
    for marker in ("ckan_config(key, value): set a CKAN config option for a test", "with_plugins: load ckan.plugins"):
        config.addinivalue_line("markers", marker)
