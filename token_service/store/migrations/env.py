"""Alembic environment: runs against the connection handed over by `store.migrate`."""

from alembic import context
from sqlalchemy import text

from token_service.store.models import SCHEMA, Base

connection = context.config.attributes["connection"]
connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table="alembic_version",
    version_table_schema=SCHEMA,
    include_schemas=True,
    include_name=lambda name, type_, parent: type_ != "schema" or name == SCHEMA,
)
with context.begin_transaction():
    context.run_migrations()
