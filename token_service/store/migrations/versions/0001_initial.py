"""Tokens, revocations (with NOTIFY on insert), audit events and signing keys.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

S = "mltokens"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "token",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner_id", sa.String(128), nullable=False),
        sa.Column("owner_name", sa.String(255), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False, server_default="access_token"),
        sa.Column("issuer", sa.String(32), nullable=False),
        sa.Column("client_id", sa.String(255)),
        sa.Column("roles", postgresql.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("ttl_seconds", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("issued_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("renew_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_used_at", TS),
        sa.Column("use_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("revoked_at", TS),
        sa.Column("revoked_by", sa.String(255)),
        sa.Column("revoke_reason", sa.Text),
        sa.Column("current_jti", sa.String(255), nullable=False),
        sa.CheckConstraint("status IN ('active', 'revoked')", name="token_status"),
        schema=S,
    )
    op.create_index("token_owner_status", "token", ["owner_id", "status"], schema=S)
    op.create_index("token_current_jti", "token", ["current_jti"], unique=True, schema=S)

    op.create_table(
        "revocation",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("jti", sa.String(255)),
        sa.Column("token_id", sa.String(64)),
        sa.Column("revoked_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("effective_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("actor", sa.String(255)),
        sa.CheckConstraint("jti IS NOT NULL OR token_id IS NOT NULL", name="revocation_target"),
        schema=S,
    )
    op.create_index("revocation_jti", "revocation", ["jti"], schema=S)
    op.create_index("revocation_token_id", "revocation", ["token_id"], schema=S)
    op.create_index("revocation_expires_at", "revocation", ["expires_at"], schema=S)
    # In the database, so every writer (lifecycle, CKAN, psql by hand) notifies validators.
    op.execute(
        f"""
        CREATE FUNCTION {S}.notify_revocation() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('mltokens_revocation', json_build_object(
                'id', NEW.id, 'jti', NEW.jti, 'token_id', NEW.token_id,
                'effective_at', NEW.effective_at, 'expires_at', NEW.expires_at)::text);
            RETURN NEW;
        END $$;
        CREATE TRIGGER revocation_notify AFTER INSERT ON {S}.revocation
            FOR EACH ROW EXECUTE FUNCTION {S}.notify_revocation();
        """
    )

    op.create_table(
        "audit_event",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("actor_id", sa.String(128)),
        sa.Column("actor_name", sa.String(255)),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("token_id", sa.String(64)),
        sa.Column("owner_id", sa.String(128)),
        sa.Column("source", sa.String(255)),
        sa.Column("detail", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        schema=S,
    )
    op.create_index("audit_event_token", "audit_event", ["token_id"], schema=S)
    op.create_index("audit_event_at", "audit_event", ["at"], schema=S)

    op.create_table(
        "signing_key",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("public_jwk", postgresql.JSONB, nullable=False),
        sa.Column("private_key", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("retired_at", TS),
        sa.Column("expires_at", TS),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("signing_key", schema=S)
    op.drop_table("audit_event", schema=S)
    op.execute(f"DROP TRIGGER revocation_notify ON {S}.revocation")
    op.execute(f"DROP FUNCTION {S}.notify_revocation()")
    op.drop_table("revocation", schema=S)
    op.drop_table("token", schema=S)
