"""exports: the destinations a job's results go to, and each result instance sent to one

Revision ID: 0015_exports
Revises: 0014_intended_use
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0015_exports"
down_revision = "0014_intended_use"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("export_to", sa.JSON(), nullable=True))
    op.create_table(
        "exports",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=True),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("results_series_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.String(500), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("transaction_uid", sa.String(64), nullable=True),
        sa.UniqueConstraint(
            "job_id", "series_uid", "destination", "kind", name="uq_exports_series_destination"
        ),
    )
    op.create_index("ix_exports_job_id", "exports", ["job_id"])
    op.create_index("ix_exports_transaction_uid", "exports", ["transaction_uid"])
    op.create_index("ix_exports_state_next_attempt_at", "exports", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("exports")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("export_to")
