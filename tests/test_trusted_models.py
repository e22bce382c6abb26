"""Model files that run code when loaded are refused unless their code is trusted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from models.loader import ModelLoadError, load_model_file
from models.trust import config_problems, h5_problems, savedmodel_problems


def _tiny_inputs():
    import tf_keras

    inputs = tf_keras.Input((32, 32, 3))
    return tf_keras, inputs, tf_keras.layers.Flatten()(inputs)


def _save(model, path: Path, fmt: str = "h5") -> Path:
    model.save(str(path), save_format=fmt)
    return path


@pytest.fixture(scope="module")
def lambda_h5(tmp_path_factory) -> Path:
    tf_keras, inputs, x = _tiny_inputs()
    x = tf_keras.layers.Lambda(lambda t: t * 2.0, name="double_it")(x)
    outputs = tf_keras.layers.Dense(2, activation="softmax")(x)
    return _save(tf_keras.Model(inputs, outputs), tmp_path_factory.mktemp("m") / "lambda.h5")


@pytest.fixture(scope="module")
def custom_layer_h5(tmp_path_factory) -> Path:
    tf_keras, inputs, x = _tiny_inputs()

    class Doubler(tf_keras.layers.Layer):
        def call(self, t):
            return t * 2.0

    outputs = tf_keras.layers.Dense(2, activation="softmax")(Doubler(name="doubler")(x))
    return _save(tf_keras.Model(inputs, outputs), tmp_path_factory.mktemp("m") / "custom.h5")


def test_the_tiny_and_resnet50_h5_files_are_trusted_as_they_are(tiny_model_path, tmp_path):
    from models.architecture import build_resnet_classifier

    assert h5_problems(tiny_model_path) == []
    # The original architecture: ImageNet ResNet50 base + Flatten + Dropout + Dense softmax.
    resnet = _save(build_resnet_classifier((32, 32), 2, seed=1), tmp_path / "resnet_ct.h5")
    assert h5_problems(resnet) == []
    assert load_model_file(resnet).info.format == "keras2-h5"


def test_a_lambda_layer_is_refused_naming_it_and_loads_with_trust(lambda_h5):
    with pytest.raises(ModelLoadError, match="Lambda layer 'double_it'") as info:
        load_model_file(lambda_h5)
    assert "--trust-code" in str(info.value)
    assert load_model_file(lambda_h5, trust_code=True).info.input_size == (32, 32)


def test_a_custom_layer_is_refused_as_a_custom_object(custom_layer_h5):
    with pytest.raises(ModelLoadError, match="Doubler layer 'doubler' is a custom object"):
        load_model_file(custom_layer_h5)


@pytest.mark.parametrize(
    "config, words",
    [
        (
            {
                "class_name": "TFOpLambda",
                "config": {"name": "tf.io.write_file", "function": "io.write_file"},
            },
            "TFOpLambda layer 'tf.io.write_file'",
        ),
        (
            {
                "class_name": "Sequential",
                "config": {
                    "layers": [
                        {
                            "class_name": "Dense",
                            "config": {"name": "d", "activation": "my_activation"},
                        }
                    ]
                },
            },
            "activation 'my_activation'",
        ),
        (
            {
                "class_name": "Dense",
                "config": {
                    "name": "d",
                    "kernel_initializer": {"class_name": "MyInit", "config": {}},
                },
            },
            "MyInit is a custom object",
        ),
        (
            {"class_name": "Dense", "module": "evil.layers", "config": {"name": "d"}},
            "Dense layer 'd' is a custom object",
        ),
    ],
)
def test_config_checks_name_what_runs_code(config, words):
    assert any(words in problem for problem in config_problems(config)), config_problems(config)


def test_savedmodel_ops_outside_the_allowlist_and_lambda_metadata_are_refused(tmp_path):
    import tensorflow as tf

    tf_keras, inputs, x = _tiny_inputs()
    clean = _save(
        tf_keras.Model(inputs, tf_keras.layers.Dense(2, activation="softmax")(x)),
        tmp_path / "clean",
        "tf",
    )
    assert savedmodel_problems(clean) == []
    assert load_model_file(clean).info.format == "savedmodel"

    tf_keras, inputs, x = _tiny_inputs()
    x = tf_keras.layers.Lambda(lambda t: t + 1.0, name="plus_one")(x)
    with_lambda = _save(tf_keras.Model(inputs, tf_keras.layers.Dense(2)(x)), tmp_path / "lam", "tf")
    assert any("Lambda layer 'plus_one'" in p for p in savedmodel_problems(with_lambda))

    class Reader(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def serve(self, path):
            return tf.io.read_file(path)

    reader_dir = tmp_path / "reader"
    tf.saved_model.save(Reader(), str(reader_dir))
    problems = savedmodel_problems(reader_dir)
    assert any("op ReadFile" in p for p in problems), problems
    with pytest.raises(ModelLoadError, match="op ReadFile"):
        load_model_file(reader_dir)


@pytest.mark.database
def test_cli_refuses_then_records_trust_code(tmp_path, database_url, lambda_h5):
    env = {
        "DATABASE_URL": database_url,
        "MODEL_STORE_DIR": str(tmp_path / "store"),
        "MODEL_PATH": "",
    }
    runner = CliRunner()
    refused = runner.invoke(main, ["models", "add", str(lambda_h5), "--name", "lam"], env=env)
    assert refused.exit_code != 0 and "double_it" in refused.output
    assert not (tmp_path / "store" / "lam").exists()
    added = runner.invoke(
        main, ["models", "add", str(lambda_h5), "--name", "lam", "--trust-code"], env=env
    )
    assert added.exit_code == 0, added.output
    rows = [
        json.loads(line)
        for line in runner.invoke(main, ["models", "list", "--json"], env=env).output.splitlines()
    ]
    assert [(r["name"], r["trusted_code"]) for r in rows] == [("lam", True)]


@pytest.mark.database
def test_model_path_follows_the_same_rule(tmp_path, database_url, lambda_h5):
    from db.model_store import ModelStore
    from db.session import make_engine, make_session_factory
    from worker.registration import load_registered, register_or_select

    session_factory = make_session_factory(make_engine(database_url))
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelLoadError, match="double_it"):
        register_or_select(session_factory, store, lambda_h5)
    model = register_or_select(session_factory, store, lambda_h5, trust_code=True)
    assert model.trusted_code is True
    assert load_registered(model, store).info.sha256 == model.sha256
