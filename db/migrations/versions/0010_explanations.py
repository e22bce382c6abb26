"""explanations: Grad-CAM heatmaps of scans, queued and leased like scans

Revision ID: 0010_explanations
Revises: 0009_webhooks
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_explanations"
down_revision = "0009_webhooks"
branch_labels = None
depends_on = None

EXPLANATION_STATUS = sa.Enum(
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    name="explanation_status",
    native_enum=False,
    length=16,
)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("explain", sa.String(20), nullable=True))
    op.create_table(
        "explanations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("scan_id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("method", sa.String(20), nullable=False),
        sa.Column("status", EXPLANATION_STATUS, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("layer", sa.String(200), nullable=True),
        sa.Column("class_name", sa.String(100), nullable=True),
        sa.Column("class_index", sa.Integer(), nullable=True),
        sa.Column("score", sa.String(20), nullable=True),
        sa.Column("probability_covid", sa.Float(), nullable=True),
        sa.Column("model_name", sa.String(200), nullable=True),
        sa.Column("model_version", sa.String(100), nullable=True),
        sa.Column("model_sha256", sa.String(64), nullable=True),
        sa.Column("model_trained", sa.Boolean(), nullable=True),
        sa.Column("engine", sa.String(50), nullable=True),
        sa.Column("precision", sa.String(20), nullable=True),
        sa.Column("preprocessing", sa.String(50), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("overlay_png", sa.LargeBinary(), nullable=True),
        sa.Column("heatmap_png", sa.LargeBinary(), nullable=True),
        sa.Column("slice_png", sa.LargeBinary(), nullable=True),
        sa.Column("map_npy", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], ondelete="CASCADE", name=op.f("fk_explanations_job_id_jobs")
        ),
        sa.ForeignKeyConstraint(
            ["scan_id"],
            ["scans.id"],
            ondelete="CASCADE",
            name=op.f("fk_explanations_scan_id_scans"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_explanations")),
        sa.UniqueConstraint("scan_id", "method", name="uq_explanations_scan_id_method"),
    )
    op.create_index(op.f("ix_explanations_job_id"), "explanations", ["job_id"])
    op.create_index(
        "ix_explanations_status_priority", "explanations", ["status", "priority", "queued_at"]
    )
    op.create_index("ix_explanations_lease_owner", "explanations", ["lease_owner"])


def downgrade() -> None:
    op.drop_table("explanations")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("explain")
