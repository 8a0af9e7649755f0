"""Tokens by model: an index that finds the active tokens whose roles name a model.

A role `model:<model id>:<operation>` names the model `<model id>`. When a model's dataset
changes in CKAN (made private, deleted, its model field removed), the plugin looks up the
active tokens that reach that model, and only those: `mltokens.role_models(roles) && ARRAY[..]`
uses this partial GIN index instead of reading every token.

Revision ID: 0004m
Revises: 0003u
"""

from alembic import op

revision = "0004m"
down_revision = "0003u"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # IMMUTABLE, so PostgreSQL may index its result; model ids never contain ':' (catalogue.py).
    op.execute(
        """
        CREATE FUNCTION mltokens.role_models(roles text[]) RETURNS text[]
        LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
            SELECT coalesce(array_agg(DISTINCT split_part(role, ':', 2)), '{}')
            FROM unnest(roles) AS role WHERE role LIKE 'model:%:%'
        $$
        """
    )
    op.execute(
        "CREATE INDEX token_active_models ON mltokens.token USING gin (mltokens.role_models(roles)) "
        "WHERE status = 'active'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX mltokens.token_active_models")
    op.execute("DROP FUNCTION mltokens.role_models(text[])")
