"""jobs and scans

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCAN_STATUS = sa.Enum(
    "queued", "running", "succeeded", "failed", name="scan_status", native_enum=False, length=16
)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_model", sa.String(200), nullable=True),
        sa.Column("model_name", sa.String(200), nullable=True),
        sa.Column("model_version", sa.String(100), nullable=True),
        sa.Column("model_sha256", sa.String(64), nullable=True),
        sa.Column("model_trained", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_created_at"), "jobs", ["created_at"])
    op.create_table(
        "scans",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(1024), nullable=False),
        sa.Column("blob_key", sa.String(300), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("status", SCAN_STATUS, nullable=False),
        sa.Column("probability_covid", sa.Float(), nullable=True),
        sa.Column("label", sa.String(100), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("model_name", sa.String(200), nullable=True),
        sa.Column("model_version", sa.String(100), nullable=True),
        sa.Column("model_sha256", sa.String(64), nullable=True),
        sa.Column("engine", sa.String(50), nullable=True),
        sa.Column("precision", sa.String(20), nullable=True),
        sa.Column("preprocessing", sa.String(50), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_scans_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scans")),
        sa.UniqueConstraint("job_id", "position", name="uq_scans_job_id_position"),
    )
    op.create_index("ix_scans_job_id_status", "scans", ["job_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_scans_job_id_status", table_name="scans")
    op.drop_table("scans")
    op.drop_index(op.f("ix_jobs_created_at"), table_name="jobs")
    op.drop_table("jobs")
