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


@pytest.mark.parametrize("name, value", [
    ("BATCH_SIZE", "zero"), ("BATCH_SIZE", "0"), ("PORT", "70000"), ("DATABASE_URL", "mysql://x"),
    ("REDIS_URL", "http://x"), ("MAX_UPLOAD_BYTES", "lots"), ("LOG_LEVEL", "loud"),
    ("MODEL_PATH", "/no/such/model.h5"), ("VISIBILITY_TIMEOUT", "-5"),
    ("MAX_LOADED_MODELS", "0"), ("MAX_LOADED_MODELS", "two"), ("MODEL_STORE_DIR", __file__),
    ("MAX_SCAN_PIXELS", "big"), ("MAX_SCAN_PIXELS", "4096x0"), ("MAX_EXPANDED_BYTES", "-1"),
    ("MAX_ARCHIVE_ENTRIES", "0"), ("MAX_COMPRESSION_RATIO", "x"), ("TRUSTED_HOSTS", "*.evil"),
    ("MODEL_TRUST_CODE", "maybe"), ("METRICS_PORT", "70000"), ("METRICS_PORT", "-1"),
    ("METRICS_ACCESS", "anyone"), ("PROMETHEUS_MULTIPROC_DIR", "/no/such/dir"),
    ("PROMETHEUS_MULTIPROC_DIR", __file__),
])
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
    custom = load_settings({"MAX_SCAN_PIXELS": "2048x1024", "TRUSTED_HOSTS": "Scans.Example.org, localhost",
                            "MODEL_TRUST_CODE": "true", "MAX_EXPANDED_BYTES": "1GB"})
    assert custom.max_scan_pixels == 2048 * 1024 and custom.max_expanded_bytes == 1024**3
    assert custom.trusted_hosts == ("scans.example.org", "localhost") and custom.model_trust_code
    assert load_settings({"TRUSTED_HOSTS": "*"}).trusted_hosts is None


def test_variable_names_lists_every_field_and_the_var_dir():
    from dataclasses import fields

    from covidscan.settings import Settings, variable_names

    names = variable_names()
    s3 = {"S3_ENDPOINT_URL", "S3_PUBLIC_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
          "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"}  # parts of BLOB_STORE
    assert {f.name.upper() for f in fields(Settings)} | {"COVIDSCAN_VAR_DIR"} | s3 == names


def test_the_readme_documents_every_variable():
    from covidscan.settings import variable_names
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    missing = [name for name in sorted(variable_names()) if f"| `{name}` |" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"


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


@pytest.mark.parametrize("name, value", [
    ("INFERENCE_ENGINE", "cuda"), ("INFERENCE_PRECISION", "int4"), ("MAX_BATCH_SIZE", "0"),
    ("MAX_BATCH_SIZE", "many"), ("MAX_QUEUE_DELAY_MS", "-1"), ("MAX_QUEUE_DELAY_MS", "2.5"),
    ("MAX_QUEUE_DELAY_MS", "600000"), ("WORKER_CONCURRENCY", "0"),
])
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


@pytest.mark.parametrize("name, value", [
    ("JOB_RETENTION", "soon"), ("JOB_RETENTION", "-1d"), ("LEASE_SECONDS", "0"),
    ("SWEEP_INTERVAL", "x"), ("MAX_ATTEMPTS", "0"),
])
def test_a_wrong_durability_value_names_its_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_metrics_are_off_on_workers_and_need_a_key_on_the_api_by_default(tmp_path):
    settings = load_settings({})
    assert (settings.metrics_port, settings.metrics_host, settings.metrics_access) == \
        (0, "127.0.0.1", "key")
    assert settings.prometheus_multiproc_dir is None
    custom = load_settings({"METRICS_PORT": "9100", "METRICS_ACCESS": "Public",
                            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert (custom.metrics_port, custom.metrics_access) == (9100, "public")
    assert custom.prometheus_multiproc_dir == tmp_path
    assert load_settings({"METRICS_PORT": "0"}).metrics_port == 0
