"""intended use: the rules a job was submitted under (which DICOM instances are skipped,
the fewest slices a series needs for a result)

Revision ID: 0014_intended_use
Revises: 0013_destinations
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0014_intended_use"
down_revision = "0013_destinations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("intended_use", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("intended_use")
