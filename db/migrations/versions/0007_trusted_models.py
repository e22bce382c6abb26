"""models registered with --trust-code

Revision ID: 0007_trusted_models
Revises: 0003_models
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_trusted_models"
down_revision = "0003_models"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(
            sa.Column("trusted_code", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("trusted_code")
