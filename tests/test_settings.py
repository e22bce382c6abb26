import pytest

from covidscan.settings import ConfigError, load_settings


def test_defaults_use_sqlite_under_var():
    settings = load_settings({})
    assert settings.database_url == "sqlite:///var/covidscan.db"
    assert settings.batch_size == 32
    assert settings.model_path is None
    assert str(settings.model_store_dir) == "var/models" and settings.max_loaded_models == 2


def test_plain_postgresql_url_gets_the_psycopg_driver():
    settings = load_settings({"DATABASE_URL": "postgresql://u@h:5432/db"})
    assert settings.database_url == "postgresql+psycopg://u@h:5432/db"


def test_sizes_accept_units():
    settings = load_settings({"MAX_UPLOAD_BYTES": "2GB", "MAX_SCAN_BYTES": "512KiB"})
    assert settings.max_upload_bytes == 2 * 1024**3
    assert settings.max_scan_bytes == 512 * 1024


@pytest.mark.parametrize(
    "name, value",
    [
        ("BATCH_SIZE", "zero"),
        ("BATCH_SIZE", "0"),
        ("PORT", "70000"),
        ("DATABASE_URL", "mysql://x"),
        ("REDIS_URL", "http://x"),
        ("MAX_UPLOAD_BYTES", "lots"),
        ("LOG_LEVEL", "loud"),
        ("MODEL_PATH", "/no/such/model.h5"),
        ("VISIBILITY_TIMEOUT", "-5"),
        ("MAX_LOADED_MODELS", "0"),
        ("MAX_LOADED_MODELS", "two"),
        ("MODEL_STORE_DIR", __file__),
        ("MAX_SCAN_PIXELS", "big"),
        ("MAX_SCAN_PIXELS", "4096x0"),
        ("MAX_EXPANDED_BYTES", "-1"),
        ("MAX_ARCHIVE_ENTRIES", "0"),
        ("MAX_COMPRESSION_RATIO", "x"),
        ("TRUSTED_HOSTS", "*.evil"),
        ("MODEL_TRUST_CODE", "maybe"),
        ("METRICS_PORT", "70000"),
        ("METRICS_PORT", "-1"),
        ("METRICS_ACCESS", "anyone"),
        ("PROMETHEUS_MULTIPROC_DIR", "/no/such/dir"),
        ("PROMETHEUS_MULTIPROC_DIR", __file__),
    ],
)
def test_a_wrong_value_names_its_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_hostile_input_limits_and_their_defaults():
    settings = load_settings({"MAX_UPLOAD_BYTES": "100MB"})
    assert settings.max_scan_pixels == 4096 * 4096
    assert settings.max_expanded_bytes == 100 * 1024**2  # follows MAX_UPLOAD_BYTES
    assert (settings.max_archive_entries, settings.max_compression_ratio) == (10_000, 200)
    assert settings.trusted_hosts == ("localhost", "127.0.0.1")
    assert settings.model_trust_code is False
    custom = load_settings(
        {
            "MAX_SCAN_PIXELS": "2048x1024",
            "TRUSTED_HOSTS": "Scans.Example.org, localhost",
            "MODEL_TRUST_CODE": "true",
            "MAX_EXPANDED_BYTES": "1GB",
        }
    )
    assert custom.max_scan_pixels == 2048 * 1024 and custom.max_expanded_bytes == 1024**3
    assert custom.trusted_hosts == ("scans.example.org", "localhost") and custom.model_trust_code
    assert load_settings({"TRUSTED_HOSTS": "*"}).trusted_hosts is None


def test_variable_names_lists_every_field_and_the_var_dir():
    from covidscan.settings import Settings, variable_names

    names = variable_names()
    s3 = {
        "S3_ENDPOINT_URL",
        "S3_PUBLIC_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    }  # parts of BLOB_STORE
    fields = {name.upper() for name in Settings.model_fields} - {"VAR_DIR"}
    assert fields | {"COVIDSCAN_VAR_DIR"} == names and s3 <= names


def test_the_configuration_page_shows_the_table_the_settings_make():
    """The docs' configuration page is made from the fields at every build: its marker is there,
    no hand-written table sits beside it, and the built page holds exactly the settings' table
    (every variable with its default and meaning, as the fields say; no other row)."""
    from covidscan.settings import config_table
    from docs.hooks import expand
    from tests.conftest import ROOT

    page = (ROOT / "docs" / "run" / "configuration.md").read_text()
    assert page.count("<!-- generated: configuration -->") == 1, (
        "docs/run/configuration.md lost its marker: the table is generated there by make docs"
    )
    assert not [line for line in page.splitlines() if line.startswith("|")], (
        "docs/run/configuration.md holds a hand-written table: keep only the marker"
    )
    built = expand(page)
    table = "".join(line + "\n" for line in built.splitlines() if line.startswith("|"))
    assert table == config_table()
    assert "| `BATCH_SIZE` |" in table and "<!-- generated" not in built


def test_the_table_shows_each_default_a_setting_takes():
    from covidscan.settings import config_table, load_settings

    settings, rows = load_settings({}), config_table().splitlines()[2:]
    shown = {row.split(" | ")[0].strip("| `"): row.split(" | ")[1] for row in rows}
    assert shown["BATCH_SIZE"] == str(settings.batch_size)
    assert shown["DATABASE_URL"] == f"`{settings.database_url}`"
    assert shown["BLOB_DIR"] == f"`{settings.blob_dir}`" == "`var/blobs`"
    assert shown["SWEEP_INTERVAL"].startswith(f"{settings.sweep_interval} ")
    assert shown["SERIES_RULE"] == f"`{settings.series_rule}`"
    assert load_settings({"MAX_UPLOAD_BYTES": shown["MAX_UPLOAD_BYTES"].strip("`")}) == settings
    assert {"COVIDSCAN_VAR_DIR", "COVIDSCAN_URL", "COVIDSCAN_API_KEY"} <= set(shown)


def test_paths_under_var_follow_covidscan_var_dir(tmp_path):
    from covidscan.settings import client_api_key

    settings = load_settings({"COVIDSCAN_VAR_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path.as_posix()}/covidscan.db"
    assert (
        settings.blob_dir,
        settings.model_store_dir,
        settings.engine_cache_dir,
        settings.api_key_file,
    ) == (tmp_path / "blobs", tmp_path / "models", tmp_path / "engine-cache", tmp_path / "api-key")
    (tmp_path / "api-key").write_text("saved\n")
    assert client_api_key({"COVIDSCAN_VAR_DIR": str(tmp_path)}) == "saved"
    assert client_api_key({"COVIDSCAN_VAR_DIR": str(tmp_path), "COVIDSCAN_API_KEY": "k"}) == "k"


def test_settings_are_frozen_and_read_nothing_on_their_own(monkeypatch):
    from pydantic import ValidationError

    from covidscan.settings import Settings

    monkeypatch.setenv("BATCH_SIZE", "7")
    assert Settings().batch_size == 32  # only load_settings reads the environment
    assert load_settings().batch_size == 7
    with pytest.raises(ValidationError):
        Settings().batch_size = 8
    assert Settings().with_overrides(batch_size=8).batch_size == 8


def test_several_wrong_values_are_named_together():
    with pytest.raises(ConfigError, match="BATCH_SIZE must be at least 1, got 0; PORT must be"):
        load_settings({"BATCH_SIZE": "0", "PORT": "x"})


def test_engine_and_batching_defaults():
    settings = load_settings({})
    assert (settings.inference_engine, settings.inference_precision) == ("auto", "fp32")
    assert (settings.max_batch_size, settings.max_queue_delay_ms) == (32, 200)
    assert settings.worker_concurrency == 64  # two batches of task threads
    assert load_settings({"MAX_BATCH_SIZE": "8"}).worker_concurrency == 16
    assert load_settings({"INFERENCE_PRECISION": "BF16"}).inference_precision == "bf16"
    for precision in ("int8", "auto"):
        assert load_settings({"INFERENCE_PRECISION": precision}).inference_precision == precision
    assert load_settings({"MAX_QUEUE_DELAY_MS": "0"}).max_queue_delay_ms == 0


@pytest.mark.parametrize(
    "name, value",
    [
        ("INFERENCE_ENGINE", "cuda"),
        ("INFERENCE_PRECISION", "int4"),
        ("MAX_BATCH_SIZE", "0"),
        ("MAX_BATCH_SIZE", "many"),
        ("MAX_QUEUE_DELAY_MS", "-1"),
        ("MAX_QUEUE_DELAY_MS", "2.5"),
        ("MAX_QUEUE_DELAY_MS", "600000"),
        ("WORKER_CONCURRENCY", "0"),
    ],
)
def test_a_wrong_engine_or_batching_value_names_its_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_durability_defaults_and_durations():
    settings = load_settings({})
    assert (settings.lease_seconds, settings.sweep_interval, settings.max_attempts) == (15, 5, 3)
    assert settings.job_retention == 30 * 86400 and settings.recovery_seconds == 20
    assert load_settings({"JOB_RETENTION": "12h"}).job_retention == 43200
    assert load_settings({"JOB_RETENTION": "0"}).job_retention == 0
    assert load_settings({"JOB_RETENTION": "90"}).job_retention == 90
    assert load_settings({"LEASE_SECONDS": "3"}).sweep_interval == 3  # never above the lease


@pytest.mark.parametrize(
    "name, value",
    [
        ("JOB_RETENTION", "soon"),
        ("JOB_RETENTION", "-1d"),
        ("LEASE_SECONDS", "0"),
        ("SWEEP_INTERVAL", "x"),
        ("MAX_ATTEMPTS", "0"),
    ],
)
def test_a_wrong_durability_value_names_its_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_metrics_are_off_on_workers_and_need_a_key_on_the_api_by_default(tmp_path):
    settings = load_settings({})
    assert (settings.metrics_port, settings.metrics_host, settings.metrics_access) == (
        0,
        "127.0.0.1",
        "key",
    )
    assert settings.prometheus_multiproc_dir is None
    custom = load_settings(
        {
            "METRICS_PORT": "9100",
            "METRICS_ACCESS": "Public",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        }
    )
    assert (custom.metrics_port, custom.metrics_access) == (9100, "public")
    assert custom.prometheus_multiproc_dir == tmp_path
    assert load_settings({"METRICS_PORT": "0"}).metrics_port == 0
