"""Migrations and models agree, and every migration goes down and up again."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from db import migrate
from db.models import Base

pytestmark = pytest.mark.database


def scan_columns(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {column["name"] for column in inspect(engine).get_columns("scans")}
    finally:
        engine.dispose()


def test_the_migrated_schema_matches_the_models(database_url):
    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_downgrade_to_base_and_upgrade_again(database_url):
    migrate.downgrade(database_url, "base")
    migrate.upgrade(database_url)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is not None
    engine.dispose()


def test_the_scan_worker_column_comes_and_goes_with_its_revision(database_url):
    assert "worker" in scan_columns(database_url)
    migrate.downgrade(database_url, "0001")
    assert "worker" not in scan_columns(database_url)
    assert {"probability_covid", "model_sha256"} <= scan_columns(database_url)
    migrate.upgrade(database_url)
    assert "worker" in scan_columns(database_url)
