"""DICOM slices: where each sits in its study and series; a model's DICOM window; a job's
series aggregation rule

Revision ID: 0011_dicom
Revises: 0010_explanations
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_dicom"
down_revision = "0010_explanations"
branch_labels = None
depends_on = None

SCAN_COLUMNS = (
    ("frame", sa.Integer()),
    ("study_uid", sa.String(64)),
    ("series_uid", sa.String(64)),
    ("sop_instance_uid", sa.String(64)),
    ("sop_class_uid", sa.String(64)),
    ("modality", sa.String(16)),
    ("instance_number", sa.Integer()),
    ("slice_position", sa.Float()),
)


def upgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        for name, kind in SCAN_COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
        batch.create_index("ix_scans_job_id_series_uid", ["job_id", "series_uid"])
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("dicom_window_width", sa.Float(), nullable=True))
        batch.add_column(sa.Column("dicom_window_level", sa.Float(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("series_rule", sa.String(50), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("series_rule")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("dicom_window_level")
        batch.drop_column("dicom_window_width")
    with op.batch_alter_table("scans") as batch:
        batch.drop_index("ix_scans_job_id_series_uid")
        for name, _kind in reversed(SCAN_COLUMNS):
            batch.drop_column(name)
