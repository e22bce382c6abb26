"""PACS destinations: where results are sent, with their credentials sealed

Revision ID: 0013_destinations
Revises: 0012_open_jobs
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_destinations"
down_revision = "0012_open_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "destinations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column(
            "kind",
            sa.Enum("dicom", "dicomweb", name="destination_kind", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("ae_title", sa.String(16), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("tls", sa.Boolean(), nullable=False),
        sa.Column("commitment", sa.Boolean(), nullable=False),
        sa.Column("url", sa.String(2000), nullable=True),
        sa.Column("credentials", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_destinations")),
        sa.UniqueConstraint("name", name=op.f("uq_destinations_name")),
    )


def downgrade() -> None:
    op.drop_table("destinations")
