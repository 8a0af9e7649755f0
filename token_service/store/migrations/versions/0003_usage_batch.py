"""Usage flush batches: each batch of usage counters a validator writes is applied once.

A validator names every batch with a random id and writes it in the same statement as the
counters; retrying a batch whose first attempt committed unseen (a timeout while PostgreSQL
hung) then changes nothing. `mltokens prune` drops batches older than a week.

Revision ID: 0003u
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0003u"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_batch",
        sa.Column("id", UUID(as_uuid=False), primary_key=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="mltokens",
    )
    op.create_index("usage_batch_applied_at", "usage_batch", ["applied_at"], schema="mltokens")


def downgrade() -> None:
    op.drop_table("usage_batch", schema="mltokens")
