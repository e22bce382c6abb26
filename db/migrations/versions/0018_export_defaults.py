"""export defaults: the destinations an owner's jobs are sent to when they name none

Revision ID: 0018_export_defaults
Revises: 0017_retrievals
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0018_export_defaults"
down_revision = "0017_retrievals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "export_defaults",
        sa.Column("owner", sa.String(200), primary_key=True),
        sa.Column("export_to", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("export_defaults")
