"""Daily usage counts per token, expiry warnings sent, and a per-token switch for those warnings.

`usage_daily` is added to by the validators' usage batches (validator/usage.py, in the same
statement as the counters, so exactly once); `mltokens prune` keeps `usage_retention` of it.
`expiry_notice` holds one row per warning mailed (`ckan mltokens notify`): its primary key is
the claim that keeps two runs, or two replicas, from mailing the same warning twice.

Revision ID: 0006u
Revises: 0005o
"""

import sqlalchemy as sa
from alembic import op

revision = "0006u"
down_revision = "0005o"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "token",
        sa.Column("expiry_notices", sa.Boolean, nullable=False, server_default=sa.text("true")),
        schema="mltokens",
    )
    op.create_table(
        "usage_daily",
        sa.Column("token_id", sa.String(64), sa.ForeignKey("mltokens.token.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        schema="mltokens",
    )
    op.create_index("usage_daily_day", "usage_daily", ["day"], schema="mltokens")
    op.create_table(
        "expiry_notice",
        sa.Column("token_id", sa.String(64), sa.ForeignKey("mltokens.token.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("lead_seconds", sa.Integer, primary_key=True),
        sa.Column("recipient_id", sa.String(128), primary_key=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="mltokens",
    )


def downgrade() -> None:
    op.drop_table("expiry_notice", schema="mltokens")
    op.drop_table("usage_daily", schema="mltokens")
    op.drop_column("token", "expiry_notices", schema="mltokens")
