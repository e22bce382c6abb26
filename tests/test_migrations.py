"""Migrations apply, revert and apply again on the test database (SQLite or PostgreSQL)."""
import pytest
from sqlalchemy import create_engine, inspect

from db import migrate

pytestmark = pytest.mark.database


def scan_columns(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {column["name"] for column in inspect(engine).get_columns("scans")}
    finally:
        engine.dispose()


def test_the_scan_worker_column_comes_and_goes_with_its_revision(database_url):
    assert "worker" in scan_columns(database_url)
    migrate.downgrade(database_url, "0001")
    assert "worker" not in scan_columns(database_url)
    assert {"probability_covid", "model_sha256"} <= scan_columns(database_url)
    migrate.upgrade(database_url)
    assert "worker" in scan_columns(database_url)
