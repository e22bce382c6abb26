"""series_expected: how many instances the sender of a C-STORE job said each series holds

Revision ID: 0016_series_expected
Revises: 0015_exports
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0016_series_expected"
down_revision = "0015_exports"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("series_expected", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("series_expected")
