"""open jobs: a job that takes its scans in several requests until it is sealed

Revision ID: 0012_open_jobs
Revises: 0011_dicom
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_open_jobs"
down_revision = "0011_dicom"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("open_until", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_jobs_open_until", ["open_until"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_open_until")
        batch.drop_column("open_until")
