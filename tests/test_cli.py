"""The covidscan CLI against a real HTTP server, a real Redis and a real worker."""

import json
import threading

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from cli.main import main
from tests.images import write_folder, zip_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def server_url(stack_config, stack_key, worker, monkeypatch):
    """The API over HTTP; the CLI finds its key in COVIDSCAN_API_KEY."""
    from api import create_app

    monkeypatch.setenv("COVIDSCAN_API_KEY", stack_key)
    server = make_server("127.0.0.1", 0, create_app(stack_config), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()


def run(url, *args):
    result = CliRunner().invoke(main, ["--url", url, *args], catch_exceptions=False)
    return result


def test_submit_a_folder_and_wait_prints_a_summary(server_url, tmp_path):
    write_folder(tmp_path / "slices", 20, size=64, corrupt=1)
    result = run(
        server_url, "submit", str(tmp_path / "slices"), "--wait", "--name", "cli", "--poll", "0.2"
    )
    assert result.exit_code == 0, result.output
    assert "partially_succeeded" in result.output
    assert "20 succeeded, 1 failed of 21" in result.output
    job_id = result.output.split()[1].rstrip(":")
    status = json.loads(run(server_url, "status", job_id).output)
    assert status["name"] == "cli" and status["counts"]["failed"] == 1
    rows = [json.loads(line) for line in run(server_url, "results", job_id).output.splitlines()]
    assert len(rows) == 21 and rows[0]["filename"] == "corrupt_0.png"
    csv_text = run(server_url, "results", job_id, "--csv").output
    assert csv_text.splitlines()[0].startswith("scan_id,filename,status")
    assert len(csv_text.splitlines()) == 22


def test_a_job_where_everything_fails_exits_non_zero(server_url, tmp_path):
    folder = tmp_path / "bad"
    write_folder(folder, 0, corrupt=2)
    result = run(server_url, "submit", str(folder), "--wait", "--poll", "0.2")
    assert result.exit_code == 1
    assert "failed" in result.output


def test_a_zip_is_submitted_as_is(server_url, tmp_path):
    paths = write_folder(tmp_path / "z", 3, size=32)
    archive = tmp_path / "set.zip"
    archive.write_bytes(zip_bytes([(p.name, p.read_bytes()) for p in paths]))
    result = run(server_url, "submit", str(archive), "--wait", "--poll", "0.2")
    assert result.exit_code == 0 and "3 succeeded, 0 failed of 3" in result.output


def test_server_errors_are_reported_plainly(server_url, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    result = run(server_url, "submit", str(tmp_path / "notes.png"))
    assert result.exit_code != 0
    assert "HTTP 415" in result.output and "notes.png" in result.output
    missing = run(server_url, "status", "no-such-job")
    assert missing.exit_code != 0 and "HTTP 404" in missing.output


@pytest.mark.parametrize(
    "option, value, problem",
    [
        ("--model", "alpha:", "model must be NAME or NAME:VERSION of a registered model"),
        ("--name", "x" * 201, "name is longer than 200 characters"),
    ],
)
def test_submit_checks_its_options_as_the_server_does_before_sending_anything(
    tmp_path, option, value, problem
):
    write_folder(tmp_path / "slices", 1, size=24)
    result = run("http://127.0.0.1:9", "submit", str(tmp_path / "slices"), option, value)
    assert result.exit_code != 0
    assert problem in result.output and "Connection" not in result.output


def test_submit_sends_the_callback_url_and_a_refusal_says_why(server_url, tmp_path):
    write_folder(tmp_path / "slices", 1, size=24)
    result = run(
        server_url,
        "submit",
        str(tmp_path / "slices"),
        "--callback-url",
        "http://169.254.169.254/latest/",
    )
    assert result.exit_code != 0
    assert "HTTP 400" in result.output and "callback_url" in result.output
    assert "metadata" in result.output


def test_without_a_key_the_cli_says_how_to_give_one(server_url, tmp_path, monkeypatch):
    monkeypatch.delenv("COVIDSCAN_API_KEY")
    monkeypatch.setenv("API_KEY_FILE", str(tmp_path / "no-such-file"))
    result = run(server_url, "status", "some-job")
    assert result.exit_code != 0 and "HTTP 401" in result.output
    assert "COVIDSCAN_API_KEY" in result.output


def test_the_cli_reads_the_key_file_make_run_saved(server_url, stack_key, tmp_path, monkeypatch):
    monkeypatch.delenv("COVIDSCAN_API_KEY")
    monkeypatch.setenv("COVIDSCAN_VAR_DIR", str(tmp_path))
    (tmp_path / "api-key").write_text(stack_key + "\n")
    result = run(server_url, "status", "no-such-job")
    assert "HTTP 404" in result.output  # authenticated: the job is simply not there


@pytest.fixture
def idle_server_url(app, api_key, monkeypatch):
    """An API whose database no worker serves: its jobs wait until cancelled."""
    monkeypatch.setenv("COVIDSCAN_API_KEY", api_key)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()


def test_cancel_and_delete_a_waiting_job(idle_server_url, tmp_path):
    write_folder(tmp_path / "slices", 5, size=32)
    submitted = run(
        idle_server_url, "submit", str(tmp_path / "slices"), "--priority", "low", "--explain"
    )
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.output.split()[-1]
    cancelled = run(idle_server_url, "cancel", job_id)
    assert cancelled.exit_code == 0, cancelled.output
    assert (
        f"job {job_id}: cancelled (5 cancelled, 0 still running, 0 succeeded)" in cancelled.output
    )
    status = json.loads(run(idle_server_url, "status", job_id).output)
    assert status["status"] == "cancelled" and status["priority"] == "low"
    assert status["explain"] == "gradcam"
    deleted = run(idle_server_url, "delete", job_id, "--yes")
    assert deleted.exit_code == 0 and f"job {job_id} deleted" in deleted.output
    assert "HTTP 404" in run(idle_server_url, "status", job_id).output


def test_wait_prints_a_summary_not_every_row_unless_asked(server_url, tmp_path):
    write_folder(tmp_path / "many", 30, size=32, corrupt=2)
    result = run(server_url, "submit", str(tmp_path / "many"), "--wait", "--poll", "0.2")
    assert result.exit_code == 0, result.output
    job_id = result.output.split()[1].rstrip(":")
    assert "30 succeeded, 2 failed of 32" in result.output
    assert "failed scans:" in result.output
    assert result.output.count("could not decode image") == 2  # each failure with its reason
    assert "slice_007.png" not in result.output  # no row for a scan that succeeded
    assert f"covidscan results {job_id} --csv > results.csv" in result.output
    listed = run(server_url, "jobs", "--limit", "5")
    assert listed.exit_code == 0 and job_id in listed.output
    line = next(line for line in listed.output.splitlines() if line.startswith(job_id))
    assert "partially_succeeded" in line and "30/32 succeeded, 2 failed" in line


def test_wait_with_table_prints_every_row(server_url, tmp_path):
    write_folder(tmp_path / "few", 3, size=32)
    result = run(server_url, "submit", str(tmp_path / "few"), "--wait", "--table", "--poll", "0.2")
    assert result.exit_code == 0, result.output
    assert all(f"slice_00{i}.png" in result.output for i in range(3))
    assert "3 succeeded, 0 failed of 3" in result.output


def test_a_pacs_folder_of_extensionless_dicom_files_is_submitted(idle_server_url, tmp_path):
    from tests import dicom_files as d

    folder = tmp_path / "PACS" / "SE1"
    folder.mkdir(parents=True)
    files, _ = d.ct_series(2)
    for index, body in enumerate(files):
        (folder / f"IM{index:04d}").write_bytes(body)
    (folder / "MR0").write_bytes(d.ct_bytes(Modality="MR"))
    (folder / ".DS_Store").write_bytes(b"junk")
    plain = run(idle_server_url, "submit", str(tmp_path / "PACS"))
    assert plain.exit_code == 0, plain.output
    assert "2 scans queued" in plain.output and "modality MR" in plain.output
    allowed = run(idle_server_url, "submit", str(tmp_path / "PACS"), "--allow-modality", "MR")
    assert allowed.exit_code == 0 and "3 scans queued" in allowed.output


def test_without_url_the_cli_talks_to_covidscan_url(server_url, monkeypatch):
    monkeypatch.setenv("COVIDSCAN_URL", server_url)
    result = CliRunner().invoke(main, ["jobs"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("COVIDSCAN_URL", "http://127.0.0.1:9")  # nothing listens there
    assert CliRunner().invoke(main, ["jobs"]).exit_code != 0


def test_train_and_evaluate_defaults_are_the_recipes():
    import click

    from cli.train import evaluate, train
    from models.train_config import TrainConfig

    for command, names in (
        (train, ("epochs", "image_size", "batch_size", "val_split", "seed", "patience")),
        (evaluate, ("batch_size",)),
    ):
        context = click.Context(command)
        defaults = {p.name: p.get_default(context) for p in command.params}
        assert {name: defaults[name] for name in names} == {
            name: getattr(TrainConfig, name) for name in names
        }
    assert "[default: 20; x>=1]" in CliRunner().invoke(train, ["--help"]).output
