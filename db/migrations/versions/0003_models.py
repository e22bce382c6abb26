"""registered models; jobs pinned to one

Revision ID: 0003_models
Revises: 0002_scan_worker
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_models"
down_revision = "0002_scan_worker"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("format", sa.String(20), nullable=False),
        sa.Column("input_height", sa.Integer(), nullable=False),
        sa.Column("input_width", sa.Integer(), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("positive_class", sa.String(100), nullable=False),
        sa.Column("preprocessing", sa.String(50), nullable=False),
        sa.Column("trained", sa.Boolean(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("stored_path", sa.String(1024), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", "version", name="uq_models_name_version"),
    )
    op.create_index(op.f("ix_models_sha256"), "models", ["sha256"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("model_id", sa.String(32), nullable=True))
        batch.create_foreign_key(
            op.f("fk_jobs_model_id_models"), "models", ["model_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index(op.f("ix_jobs_model_id"), ["model_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_model_id"))
        batch.drop_constraint(op.f("fk_jobs_model_id_models"), type_="foreignkey")
        batch.drop_column("model_id")
    op.drop_index(op.f("ix_models_sha256"), table_name="models")
    op.drop_table("models")
