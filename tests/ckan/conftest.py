"""CKAN test session for ckanext-mltokens: real PostgreSQL and Redis, CKAN's pytest plugin.

Run with `python -m pytest --ckan-ini=tests/ckan/test.ini tests/ckan`. Each session makes
its own database named after test.ini's (and drops it at the end); CKAN's tables come from
CKAN's own reset, the token tables and the first signing key from our `ckan mltokens init`.
"""

from __future__ import annotations

import configparser
import contextlib
import html
import os
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import psycopg2
import pytest
from ckan.tests import factories
from ckan.tests.helpers import CKANCliRunner, CKANTestApp, call_action
from psycopg2 import sql
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

DATABASE = pytest.StashKey[URL]()


def _admin(url: URL) -> Any:
    conn = psycopg2.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, dbname="postgres"
    )
    conn.autocommit = True
    return conn


def _session_alive(suffix: str) -> bool:
    """Whether the session that named a database `<base>_<pid>_<hex>` still runs."""
    pid = suffix.split("_", 1)[0]
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")


def _session_database(ini: str) -> URL:
    """A database of this session's own, named after test.ini's, so concurrent runs do not collide.

    Leftovers of killed runs are dropped on the way (a database still in use is left alone).
    """
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ini)
    base = make_url(parser.get("app:main", "sqlalchemy.url"))
    url = base.set(database=f"{base.database}_{os.getpid()}_{uuid.uuid4().hex[:6]}")
    conn = _admin(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{base.database}\\_%",))
            for (stale,) in cur.fetchall():
                if _session_alive(stale[len(base.database) + 1 :]):
                    continue  # another session's, perhaps not connected to yet
                with contextlib.suppress(psycopg2.errors.ObjectInUse):
                    cur.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(stale)))
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
    finally:
        conn.close()
    return url


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Before CKAN's own session start (which builds the app): this session's database.

    CKAN reads `CKAN_SQLALCHEMY_URL` over the ini's `sqlalchemy.url`, in this process and
    in the `ckan` commands the tests run.
    """
    ini = session.config.getoption("ckan_ini", default=None)
    if ini:
        url = _session_database(ini)
        os.environ["CKAN_SQLALCHEMY_URL"] = url.render_as_string(hide_password=False)
        session.config.stash[DATABASE] = url


def pytest_sessionfinish(session: pytest.Session) -> None:
    url = session.config.stash.get(DATABASE, None)
    if url is not None:
        conn = _admin(url)
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(url.database)))
        finally:
            conn.close()


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
        s.execute(
            text(
                "TRUNCATE mltokens.token, mltokens.revocation, mltokens.audit_event, "
                "mltokens.usage_daily, mltokens.expiry_notice"
            )
        )


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


def claims(secret: str) -> dict[str, Any]:
    """Verify a token string (the `mlt_` prefix, then a JWT) with the local issuer's published keys, as the
    validator does; its claims."""
    from ckanext.mltokens import service

    assert secret.startswith("mlt_eyJ"), secret[:8]
    secret = secret.removeprefix("mlt_")
    keys = jwt.PyJWKSet.from_dict(service.lifecycle().issuer.jwks())
    header = jwt.get_unverified_header(secret)
    key = next(k for k in keys.keys if k.key_id == header["kid"])
    leeway = service.settings().leeway  # the validator's default
    return jwt.decode(
        secret, key.key, algorithms=["RS256"], audience="model-api", issuer="http://issuer.test/local", leeway=leeway
    )


def roles_of(groups: list[dict[str, Any]]) -> list[str]:
    """The roles of `mltoken_roles_list`'s answer (grouped by model), in one sorted list."""
    return sorted(role for group in groups for role in group["roles"])


# Browser sessions against the test app (test_views.py, test_csrf.py).

PASSWORD = "Correct-Horse-123"
PREDICT = "model:sentiment:predict"
CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')
NONCE = re.compile(r'name="mltoken_form" value="([^"]+)"')


class Visitor:
    """One browser session against the test app.

    It holds one test client, which keeps its cookies (the login) across requests: CKAN
    2.11's `CKANTestApp.get/post` make a new client, with an empty cookie jar, per request.
    """

    def __init__(self, app: Any) -> None:
        self.app = CKANTestApp(app.app).test_client()  # its own cookie jar (a test client), same CKAN app

    def login(self, user: dict[str, Any]) -> Visitor:
        page = self.app.get("/user/login")
        response = self.app.post(
            "/user/login",
            data={"login": user["name"], "password": PASSWORD, "_csrf_token": self.csrf(page)},
            follow_redirects=False,
        )
        assert response.status_code == 302, response.body
        return self

    @staticmethod
    def csrf(page: Any) -> str:
        return CSRF.search(page.body).group(1)

    def get(self, url: str, status: int = 200) -> Any:
        return self.app.get(url, status=status)

    @staticmethod
    def nonce(page: Any) -> str | None:
        """The page's form nonce (create and renew forms), if it has one."""
        found = NONCE.search(page.body)
        return found.group(1) if found else None

    def post(self, url: str, data: dict[str, Any], status: int = 200, csrf_from: str | None = None) -> Any:
        """Send a form as a browser does, with the CSRF token and form nonce of the page `csrf_from`."""
        if csrf_from is not None:
            page = self.get(csrf_from)
            data = {"mltoken_form": self.nonce(page), **data, "_csrf_token": self.csrf(page)}
        return self.app.post(url, data={k: v for k, v in data.items() if v is not None}, status=status)


def page_url(user: dict[str, Any]) -> str:
    return f"/user/{user['name']}/ml-tokens"


def secret_in(page: Any) -> str:
    return html.unescape(re.search(r'id="mltoken-secret"[^>]*value="([^"]+)"', page.body).group(1))


@pytest.fixture
def people() -> dict[str, dict[str, Any]]:
    return {
        "ann": factories.User(password=PASSWORD),
        "bob": factories.User(password=PASSWORD),
        "root": factories.Sysadmin(password=PASSWORD),
    }


@pytest.fixture
def visit(app: Any) -> Callable[[dict[str, Any]], Visitor]:
    return lambda user: Visitor(app).login(user)


def pytest_configure(config: pytest.Config) -> None:
    """Markers of CKAN's pytest plugin, declared for --strict-markers."""
    for marker in ("ckan_config(key, value): set a CKAN config option for a test", "with_plugins: load ckan.plugins"):
        config.addinivalue_line("markers", marker)
    if config.getoption("ckan_ini", default=None):
        config.pluginmanager.import_plugin("tests.ckan.solr_session")


def organization_token(token_name: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """An organization with two admins and an editor (each with an e-mail address of their own), a
    dataset of it publishing the model `sentiment` (predict), and a token of the organization made
    by its first admin: (the organization, the created token, the admins' e-mail addresses)."""
    tag = uuid.uuid4().hex[:8]
    admin, other_admin, editor = (factories.User(email=f"{who}-{tag}@example.org") for who in ("a1", "a2", "ed"))
    org = factories.Organization(
        users=[
            {"name": admin["name"], "capacity": "admin"},
            {"name": other_admin["name"], "capacity": "admin"},
            {"name": editor["name"], "capacity": "editor"},
        ]
    )
    publish_model("sentiment", "predict", owner_org=org["id"])
    context = {"user": admin["name"], "ignore_auth": False}
    token = call_action("mltoken_create", context=context, owner_org=org["name"], name=token_name, roles=[PREDICT])
    return org, token, sorted([admin["email"], other_admin["email"]])


def publish_model(model_id: str, operations: str, **fields: Any) -> dict[str, Any]:
    """A dataset publishing `model_id` with `operations`, after deleting any active dataset that
    published it before: a model id belongs to one dataset, and the tests share one database."""
    from ckanext.mltokens import compat

    for package, _extras in compat.model_packages([model_id]):
        call_action("package_delete", id=package.id)
    extras = [{"key": "model_id", "value": model_id}, {"key": "model_operations", "value": operations}]
    return factories.Dataset(extras=extras, **fields)
