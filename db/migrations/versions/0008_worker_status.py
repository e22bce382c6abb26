"""workers say when they are ready and which engines serve each model

Revision ID: 0008_worker_status
Revises: 0006_access
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_worker_status"
down_revision = "0006_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_status",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ready", sa.Boolean(), nullable=False),
        sa.Column("engines", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_worker_status")),
    )


def downgrade() -> None:
    op.drop_table("worker_status")
