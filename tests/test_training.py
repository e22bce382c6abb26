"""``covidscan train`` and ``covidscan evaluate`` on a synthetic two-class set, and a job
served by the trained model through a real worker while the default is another model."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import main
from tests.blob_data import blob_slice, write_blob_dataset
from tests.models import save_calibrated_notop
from tests.test_evaluation import check_against_direct

pytestmark = pytest.mark.integration

SIZE = 64


def cli(env, *args):
    result = CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    """A Redis of this module's own: the session's worker must not take these tasks."""
    from devtools.embedded_redis import EmbeddedRedis

    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False) as server:
        yield server


@pytest.fixture(scope="module")
def trained(tmp_path_factory, own_redis, tiny_model_path):
    """A registry whose default is the tiny H5, plus a model trained by `covidscan train`."""
    from tests.conftest import fresh_database_url

    base = tmp_path_factory.mktemp("training")
    data = write_blob_dataset(base / "data", 64, size=SIZE)
    unlabelled = np.stack(
        [
            np.asarray(
                blob_slice(SIZE, 50_000 + i, blobs=i % 2 == 0).convert("RGB"), dtype=np.float32
            )
            / 255
            for i in range(32)
        ]
    )
    notop = save_calibrated_notop(base / "notop.h5", unlabelled)
    env = {
        "DATABASE_URL": fresh_database_url(base),
        "REDIS_URL": own_redis.url,
        "BLOB_DIR": str(base / "blobs"),
        "MODEL_STORE_DIR": str(base / "store"),
        "BATCH_SIZE": "8",
        "MODEL_PATH": "",
    }
    cli(env, "models", "add", tiny_model_path, "--name", "tiny", "--version", "1", "--default")
    output = cli(
        env,
        "train",
        data,
        "--epochs",
        2,
        "--image-size",
        SIZE,
        "--batch-size",
        8,
        "--imagenet-weights",
        notop,
        "--name",
        "blobnet",
        "--version",
        "1",
        "--output",
        base / "run",
    )
    return {"env": env, "data": data, "run": base / "run", "output": output, "base": base}


def predictions(folder):
    with open(folder / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    y = np.array([row["true_class"] == "COVID" for row in rows], dtype=int)
    return y, np.array([float(row["probability_positive"]) for row in rows])


def test_training_learns_and_registers_the_model_with_its_report(trained):
    report = json.loads((trained["run"] / "report.json").read_text())
    assert report["kind"] == "training" and report["n"] == 26  # 20 % of 128, stratified
    assert report["metrics"]["accuracy"] >= 0.7, report["metrics"]  # chance is 0.5
    assert report["metrics"]["roc_auc"] >= 0.8, report["metrics"]
    training = report["training"]
    assert training["epochs_run"] == 2 and len(training["history"]["val_loss"]) == 2
    assert "ImageNet weights from" in training["base_weights"]
    card = report["model_card"]
    assert "not for clinical diagnosis" in card["intended_use"]
    assert card["data"]["folders"] == {"COVID": 64, "non-COVID": 64}
    assert card["split"]["validation"] == {"COVID": 13, "non-COVID": 13}
    assert (trained["run"] / "model_card.md").read_text() == card["markdown"]
    listed = {
        m["name"]: m
        for m in map(json.loads, cli(trained["env"], "models", "list", "--json").splitlines())
    }
    assert listed["tiny"]["default"] and not listed["blobnet"]["default"]
    assert listed["blobnet"]["has_report"] and listed["blobnet"]["input_size"] == [SIZE, SIZE]
    assert listed["blobnet"]["classes"] == ["COVID", "non-COVID"]
    page = (trained["run"] / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "https://" not in page


def test_the_training_report_matches_a_direct_computation(trained):
    report = json.loads((trained["run"] / "report.json").read_text())
    y, p = predictions(trained["run"])
    assert len(y) == report["n"]
    check_against_direct(report, y, p)


def test_evaluate_a_registered_model_on_a_folder(trained):
    out = trained["base"] / "evaluation"
    cli(trained["env"], "evaluate", "blobnet:1", trained["data"], "--output", out, "--attach")
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "evaluation" and report["n"] == 128
    assert (
        report["model"]["sha256"]
        == json.loads((trained["run"] / "report.json").read_text())["model"]["sha256"]
    )
    y, p = predictions(out)
    check_against_direct(report, y, p)
    assert (out / "report.html").stat().st_size > 10_000


def test_evaluate_a_model_file_with_imperfect_scores(trained, tiny_model_path):
    out = trained["base"] / "evaluation-tiny"
    cli(trained["env"], "evaluate", tiny_model_path, trained["data"], "--output", out)
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == "tiny_ct" and report["n"] == 128
    assert 0.0 < report["metrics"]["accuracy"] < 1.0  # a random model: every metric matters
    y, p = predictions(out)
    check_against_direct(report, y, p)


@pytest.fixture(scope="module")
def serving(trained, tmp_path_factory):
    """A real worker on the training registry (default: tiny), at most two models warm."""
    from api import create_app
    from tests.conftest import WorkerProcess, authorised, create_api_key, worker_env
    from tests.models import save_tiny_h5

    env = trained["env"]
    spare = save_tiny_h5(tmp_path_factory.mktemp("spare") / "spare.h5", seed=99)
    cli(env, "models", "add", spare, "--name", "tampered", "--version", "1")
    stored = trained["base"] / "store" / "tampered" / "1" / "spare.h5"
    stored.write_bytes(stored.read_bytes() + b"\0")  # changed after registration
    log_path = trained["base"] / "worker.log"
    worker = WorkerProcess(worker_env(env, MAX_LOADED_MODELS="2"), log_path, name="registry@%h")
    try:
        worker.wait_ready()
        yield (
            authorised(create_app(env).test_client(), create_api_key(env["DATABASE_URL"])),
            log_path,
        )
    finally:
        worker.stop()


def submit(client, count, seed, **form):
    import io

    from tests.images import encode

    files = [
        (
            io.BytesIO(encode(blob_slice(SIZE, seed + i, blobs=i % 2 == 0))),
            f"{'covid' if i % 2 == 0 else 'clear'}_{i:02d}.png",
        )
        for i in range(count)
    ]
    response = client.post(
        "/v1/jobs", data={"files": files, **form}, content_type="multipart/form-data"
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def finished_rows(client, job):
    from tests.conftest import wait_for_job

    final = wait_for_job(client, job["id"])
    return final, client.get(f"/v1/jobs/{job['id']}/results?limit=1000").get_json()["results"]


def test_a_job_pinned_to_the_trained_model_is_served_by_it(serving):
    client, log_path = serving
    registry = client.get("/v1/models").get_json()
    assert registry["default"] == "tiny:1"
    blobnet = next(m for m in registry["models"] if m["name"] == "blobnet")
    pinned = submit(client, 20, 70_000, model="blobnet:1")  # three chunks of at most 8
    other = submit(client, 4, 80_000)  # the default, in between
    again = submit(client, 12, 90_000, model="blobnet")
    final, rows = finished_rows(client, pinned)
    assert final["status"] == "succeeded"
    assert final["model"] == {
        "name": "blobnet",
        "version": "1",
        "sha256": blobnet["sha256"],
        "trained": True,
    }
    assert {(r["model_name"], r["model_version"], r["model_sha256"]) for r in rows} == {
        ("blobnet", "1", blobnet["sha256"])
    }
    right = sum(
        r["label"] == ("COVID" if r["filename"].startswith("covid") else "non-COVID") for r in rows
    )
    assert right >= 14, [(r["filename"], r["probability_covid"]) for r in rows]
    _, default_rows = finished_rows(client, other)
    assert {r["model_name"] for r in default_rows} == {"tiny"}
    assert finished_rows(client, again)[0]["model"]["name"] == "blobnet"
    log = log_path.read_text()
    assert log.count("warming model blobnet:1") == 1, "reloaded although two models fit"


def test_a_model_file_changed_after_registration_is_refused(serving):
    client, _ = serving
    final, rows = finished_rows(client, submit(client, 3, 95_000, model="tampered:1"))
    assert final["status"] == "failed" and final["counts"]["failed"] == 3
    for row in rows:
        assert row["probability_covid"] is None
        assert "tampered:1 refused" in row["error"]
        assert "does not match the recorded" in row["error"]
    healthy = finished_rows(client, submit(client, 2, 96_000))[0]
    assert healthy["status"] == "succeeded"
