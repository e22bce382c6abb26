"""durable jobs: leases, attempts, priority, cancel, retention, and the wake-up outbox

Revision ID: 0005_durability
Revises: 0007_trusted_models
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_durability"
down_revision = "0007_trusted_models"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("precision", sa.String(20), nullable=True))
        batch.add_column(sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index(op.f("ix_jobs_expires_at"), ["expires_at"])
    with op.batch_alter_table("scans") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(
            sa.Column(
                "queued_at",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default=sa.func.current_timestamp(),
            )
        )
        batch.add_column(sa.Column("lease_owner", sa.String(200), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("result_writes", sa.Integer(), nullable=False, server_default="0")
        )
        batch.create_index("ix_scans_status_priority", ["status", "priority", "queued_at"])
        batch.create_index("ix_scans_lease_owner", ["lease_owner"])
    # Scans finished before leases existed were written once; running ones go back to the queue.
    op.execute("UPDATE scans SET result_writes = 1 WHERE status IN ('succeeded', 'failed')")
    op.execute("UPDATE scans SET status = 'queued' WHERE status = 'running'")
    op.create_table(
        "wakeups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tasks", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wakeups")),
    )


def downgrade() -> None:
    op.drop_table("wakeups")
    op.execute("UPDATE scans SET status = 'failed', error = 'cancelled' WHERE status = 'cancelled'")
    with op.batch_alter_table("scans") as batch:
        batch.drop_index("ix_scans_lease_owner")
        batch.drop_index("ix_scans_status_priority")
        for column in (
            "result_writes",
            "attempts",
            "lease_expires_at",
            "lease_owner",
            "queued_at",
            "priority",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_expires_at"))
        for column in ("expires_at", "cancelled_at", "precision", "priority"):
            batch.drop_column(column)
