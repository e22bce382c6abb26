"""The series rule, its setting, and the window a model is registered with."""

import pytest
from click.testing import CliRunner

from cli.main import main
from covidscan.settings import ConfigError, load_settings
from db.series import aggregate


def test_top_ten_percent_mean_takes_at_least_one_slice():
    assert aggregate([0.1, 0.9, 0.2]) == 0.9  # ceil(10 % of 3) = 1
    values = [i / 100 for i in range(100)]
    assert aggregate(values) == pytest.approx(sum(values[-10:]) / 10)
    assert aggregate(values[:11]) == pytest.approx((0.10 + 0.09) / 2)  # 11 slices: top 2
    assert aggregate([]) is None


@pytest.mark.parametrize(
    "rule, expected",
    [("mean", 0.4), ("max", 0.9), ("top50pct-mean", 1.7 / 3), ("top100pct-mean", 0.4)],
)
def test_other_rules(rule, expected):
    assert aggregate([0.1, 0.2, 0.6, 0.9, 0.2], rule) == pytest.approx(expected)


def test_an_unknown_rule_is_refused_by_the_setting_and_the_function():
    base = {"DATABASE_URL": "sqlite://"}
    assert load_settings(base).series_rule == "top10pct-mean"
    assert load_settings({**base, "SERIES_RULE": "Top25pct-Mean"}).series_rule == "top25pct-mean"
    for bad in ("top0pct-mean", "top101pct-mean", "median"):
        with pytest.raises(ConfigError, match="SERIES_RULE"):
            load_settings({**base, "SERIES_RULE": bad})
    with pytest.raises(ValueError):
        aggregate([0.5], "median")


@pytest.mark.database
def test_models_add_records_the_dicom_window(tmp_path, database_url, tiny_model_path):
    from db.registry import get_model
    from db.session import make_engine, make_session_factory

    env = {
        "DATABASE_URL": database_url,
        "MODEL_STORE_DIR": str(tmp_path / "store"),
        "MODEL_PATH": "",
    }
    runner = CliRunner()
    bad = runner.invoke(
        main,
        ["models", "add", str(tiny_model_path), "--name", "t", "--dicom-window", "0,40"],
        env=env,
    )
    assert bad.exit_code != 0 and "--dicom-window" in bad.output
    good = runner.invoke(
        main,
        [
            "models",
            "add",
            str(tiny_model_path),
            "--name",
            "t",
            "--version",
            "1",
            "--dicom-window",
            "400,40",
        ],
        env=env,
    )
    assert good.exit_code == 0, good.output
    with make_session_factory(make_engine(database_url))() as session:
        model = get_model(session, "t:1")
        assert (model.dicom_window_width, model.dicom_window_level) == (400.0, 40.0)
    from db.model_store import ModelStore
    from worker.registration import load_registered

    loaded = load_registered(model, ModelStore(tmp_path / "store"))
    assert loaded.info.dicom_window == (400.0, 40.0)
