"""Retrievals: cohorts pulled from a PACS by accession numbers (sealed) or study UIDs

Revision ID: 0017_retrievals
Revises: 0016_series_expected
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0017_retrievals"
down_revision = "0016_series_expected"
branch_labels = None
depends_on = None

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
OUTCOMES = ("queued", "found", "retrieved", "not_found", "refused", "failed")


def upgrade() -> None:
    op.create_table(
        "retrievals",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("by", sa.String(20), nullable=False),
        sa.Column("sealed_accessions", sa.LargeBinary(), nullable=True),
        sa.Column("study_uids", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrievals")),
    )
    op.create_index(op.f("ix_retrievals_owner"), "retrievals", ["owner"])
    op.create_index(op.f("ix_retrievals_created_at"), "retrievals", ["created_at"])
    op.create_table(
        "retrieval_items",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("retrieval_id", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column(
            "outcome",
            sa.Enum(*OUTCOMES, name="retrieval_outcome", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("study_uids", sa.JSON(), nullable=True),
        sa.Column("instances_expected", sa.Integer(), nullable=True),
        sa.Column("instances_retrieved", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "status",
            sa.Enum(*STATUSES, name="retrieval_item_status", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["retrieval_id"],
            ["retrievals.id"],
            name=op.f("fk_retrieval_items_retrieval_id_retrievals"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_retrieval_items_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrieval_items")),
        sa.UniqueConstraint(
            "retrieval_id", "position", name="uq_retrieval_items_retrieval_id_position"
        ),
    )
    op.create_index(op.f("ix_retrieval_items_job_id"), "retrieval_items", ["job_id"])
    op.create_index(
        "ix_retrieval_items_status_priority", "retrieval_items", ["status", "priority", "queued_at"]
    )
    op.create_index("ix_retrieval_items_lease_owner", "retrieval_items", ["lease_owner"])


def downgrade() -> None:
    op.drop_table("retrieval_items")
    op.drop_table("retrievals")
