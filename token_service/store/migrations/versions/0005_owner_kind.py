"""Organization tokens: a token's owner is a user or an organization (`owner_kind`).

Existing tokens and audit events are users'. The audit event names the owner's kind too,
so an organization's history (who of its admins did what) is one query.

Revision ID: 0005o
Revises: 0004m
"""

import sqlalchemy as sa
from alembic import op

revision = "0005o"
down_revision = "0004m"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "token", sa.Column("owner_kind", sa.String(16), nullable=False, server_default="user"), schema="mltokens"
    )
    op.create_check_constraint("token_owner_kind", "token", "owner_kind IN ('user', 'organization')", schema="mltokens")
    op.add_column("audit_event", sa.Column("owner_kind", sa.String(16)), schema="mltokens")
    op.execute("UPDATE mltokens.audit_event SET owner_kind = 'user' WHERE owner_id IS NOT NULL")


def downgrade() -> None:
    op.drop_column("audit_event", "owner_kind", schema="mltokens")
    op.drop_constraint("token_owner_kind", "token", schema="mltokens")
    op.drop_column("token", "owner_kind", schema="mltokens")
