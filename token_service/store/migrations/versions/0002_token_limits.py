"""Per-token rate limit and daily quota, chosen at creation within operator bounds.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("token", sa.Column("rate_limit", sa.Float), schema="mltokens")
    op.add_column("token", sa.Column("daily_quota", sa.Integer), schema="mltokens")
    op.create_check_constraint(
        "token_limits",
        "token",
        "(rate_limit IS NULL OR rate_limit > 0) AND (daily_quota IS NULL OR daily_quota > 0)",
        schema="mltokens",
    )


def downgrade() -> None:
    op.drop_constraint("token_limits", "token", schema="mltokens")
    op.drop_column("token", "daily_quota", schema="mltokens")
    op.drop_column("token", "rate_limit", schema="mltokens")
