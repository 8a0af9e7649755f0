"""The database handle: engine, transactions, migrations and revocation queries."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, or_, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import StoreUnavailable
from .models import SCHEMA, Revocation

MIGRATIONS = Path(__file__).with_name("migrations")


def head_revision() -> str:
    """The newest migration this code ships."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def explain(exc: BaseException, database_url: str | None = None) -> str | None:
    """A database failure (anywhere in `exc`'s chain) in one line that names its cause and
    what to do, for an operator's terminal; None when `exc` is not a database failure."""
    error: BaseException | None = exc
    while error is not None and not isinstance(error, SQLAlchemyError):
        error = error.__cause__ or error.__context__
    if error is None:
        return None
    where, db = "PostgreSQL", ""
    if database_url:
        with contextlib.suppress(ArgumentError, ValueError):
            url = make_url(database_url)
            where = f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432}"
            db = url.database or ""
    if not isinstance(error, DBAPIError):
        return f"database_url: {error}"
    orig = error.orig
    text_ = str(orig).strip()
    detail = text_.splitlines()[0] if text_ else type(orig).__name__
    detail = re.sub(r"^.*? failed: (FATAL:\s*)?", "", detail).strip()
    code = getattr(orig, "pgcode", None)
    if code in ("42P01", "3F000"):  # undefined table, undefined schema
        return f"the token store's tables are missing in database {db or '(database_url)'}: run `mltokens db upgrade`"
    if code == "42501":
        return f"{where} refused the statement ({detail}): the database user lacks a privilege"
    if code is None and isinstance(error, OperationalError):  # while connecting
        if re.search(r'database ".*" does not exist', text_):
            return f"database {db} does not exist on {where}: create it (createdb {db}), then run `mltokens db upgrade`"
        if "refused" in detail.lower():
            return f"cannot connect to {where}: connection refused; is it running? (check MLTOKENS_DATABASE_URL)"
        if "authentication" in detail or "password" in detail or re.search(r'role ".*" does not exist', detail):
            return f"{where} refused the login: {detail}"
        return f"cannot connect to {where}: {detail}"
    return f"the token store failed ({type(orig).__name__}: {detail})"


class Store:
    def __init__(self, database_url: str, **engine_options: object) -> None:
        self.url = database_url
        # future=True: the 2.0-style API on SQLAlchemy 1.4 (CKAN 2.11's pin); the default on 2.0.
        self.engine: Engine = create_engine(database_url, pool_pre_ping=True, future=True, **engine_options)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, future=True)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error.

        Database failures surface as StoreUnavailable with a message safe for users; the
        original error stays chained for the logs.
        """
        session = self._sessions()
        try:
            with session.begin():
                yield session
        except (DBAPIError, SQLAlchemyError) as exc:
            raise StoreUnavailable("The token store could not complete the change; nothing was changed.") from exc
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()

    # -- migrations --------------------------------------------------------------

    def _alembic(self, connection: object) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = connection
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        with self.engine.begin() as conn:
            command.upgrade(self._alembic(conn), revision)

    def downgrade(self, revision: str = "base") -> None:
        with self.engine.begin() as conn:
            command.downgrade(self._alembic(conn), revision)

    def revision(self) -> str | None:
        with self.engine.connect() as conn:
            exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": f"{SCHEMA}.alembic_version"}).scalar()
            if not exists:
                return None
            ctx = MigrationContext.configure(conn, opts={"version_table_schema": SCHEMA})
            return ctx.get_current_revision()

    # -- revocations ---------------------------------------------------------------

    def revocation_for(
        self, jti: str | None, token_id: str | None, now: datetime, credential: str | None = None
    ) -> Revocation | None:
        """The revocation in effect now for this jti, token id or credential (revoked as a jti), if any."""
        targets = []
        jtis = [j for j in (jti, credential) if j]
        if jtis:
            targets.append(Revocation.jti.in_(jtis))
        if token_id:
            targets.append(Revocation.token_id == token_id)
        if not targets:
            return None
        query = (
            select(Revocation)
            .where(or_(*targets), Revocation.effective_at <= now)
            .order_by(Revocation.effective_at)
            .limit(1)
        )
        with self.transaction() as session:
            return session.scalars(query).first()
