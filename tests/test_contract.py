"""The contract every layer shares: the task names between the API and the workers, the
states, and how a request's fields are read."""

import subprocess
import sys

import pytest

from covidscan.contract import (
    DELIVER_TASK,
    FALSE_WORDS,
    INFER_QUEUE,
    TRUE_WORDS,
    WAKE_TASK,
    parse_flag,
)
from tests.conftest import ROOT


def test_the_worker_registers_the_task_the_api_sends():
    from worker import tasks
    from worker.celery_app import app

    assert WAKE_TASK == "covidscan.wake"
    assert tasks.wake.name == WAKE_TASK
    assert WAKE_TASK in app.tasks


def test_the_worker_registers_the_webhook_task_the_api_and_the_sweep_send():
    from worker import tasks
    from worker.celery_app import app

    assert DELIVER_TASK == "covidscan.deliver_webhook"
    assert tasks.deliver_webhook.name == DELIVER_TASK
    assert DELIVER_TASK in app.tasks


def test_the_worker_app_obeys_the_queue_invariants():
    from covidscan.settings import load_settings
    from worker.celery_app import app, configure

    configure(
        app, load_settings({"REDIS_URL": "redis://127.0.0.1:1/0", "VISIBILITY_TIMEOUT": "7200"})
    )
    conf = app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.broker_transport_options["visibility_timeout"] == 7200
    assert conf.task_default_queue == INFER_QUEUE


def test_the_web_tier_imports_neither_the_worker_nor_tensorflow():
    code = (
        "import sys; from api import create_app; create_app({}); "
        "bad = [m for m in ('tensorflow', 'tf_keras', 'keras', 'cv2', 'worker', 'models') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_the_worker_loads_no_model_and_connects_nowhere():
    code = (
        "import sys; import worker.tasks; "
        "bad = [m for m in ('tensorflow', 'tf_keras') if m in sys.modules]; "
        "from worker import runtime; assert runtime._runtime is None; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_dicom_thumbnail_needs_nothing_the_api_image_lacks():
    """The API image holds api/, db/ and covidscan/ only: no models package, no OpenCV."""
    code = (
        "import sys; sys.modules['models'] = None; sys.modules['cv2'] = None; "
        "from pydicom.data import get_testdata_file; "
        "from api.thumbnails import make_dicom_thumbnail; "
        "data = open(get_testdata_file('CT_small.dcm'), 'rb').read(); "
        "jpeg = make_dicom_thumbnail(data, 0, (1500.0, -600.0), 4096 * 4096); "
        "print(jpeg[:3] == bytes([0xFF, 0xD8, 0xFF]))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stdout + result.stderr


# One contract for states and for the words of a request.


def test_each_state_is_defined_once_and_the_database_uses_it():
    from covidscan.contract import JobStatus, ScanStatus
    from db import models
    from db.jobs import FINISHED_STATUSES, JobCounts

    assert models.ScanStatus is ScanStatus
    assert JobCounts(total=2, succeeded=1, failed=1).status() is JobStatus.PARTIALLY_SUCCEEDED
    assert JobCounts(total=1, running=1).status(cancel_requested=True) is JobStatus.CANCELLING
    assert set(FINISHED_STATUSES) == {"succeeded", "partially_succeeded", "failed", "cancelled"}
    assert f"{JobStatus.OPEN}" == "open" and str(ScanStatus.QUEUED) == "queued"


@pytest.mark.parametrize(
    "word, meaning",
    [
        *((word, True) for word in TRUE_WORDS),
        *((word, False) for word in FALSE_WORDS),
        (" TRUE ", True),
        ("No", False),
    ],
)
def test_one_set_of_words_for_true_and_false_wherever_a_flag_is_read(word, meaning):
    from api.fields import validated
    from api.schemas import SeriesQuery, SubmitJobForm

    assert parse_flag(word) is meaning
    assert validated(SubmitJobForm, {"open": word}).open is meaning
    assert validated(SeriesQuery, {"slices": word}).slices is meaning


def test_a_word_that_is_neither_true_nor_false_is_refused_naming_the_field():
    from api.fields import validated
    from api.problems import Problem
    from api.schemas import SeriesQuery

    with pytest.raises(ValueError, match="must be true or false"):
        parse_flag("maybe")
    with pytest.raises(Problem) as refused:
        validated(SeriesQuery, {"slices": "maybe"})
    assert refused.value.status == 400
    assert refused.value.detail.startswith("slices must be true or false")
    assert refused.value.extra == {"slices": "maybe"}
    assert validated(SeriesQuery, {"slices": ""}).slices is False  # empty: the default


@pytest.mark.parametrize(
    "model, fields, detail",
    [
        ("ResultsQuery", {"limit": "0"}, "limit must be between 1 and 1000, got 0"),
        ("ResultsQuery", {"limit": "ten"}, "limit must be a whole number, got 'ten'"),
        ("ResultsQuery", {"format": "xml"}, "format must be json or csv, got 'xml'"),
        ("AuditQuery", {"cursor": str(2**31)}, f"cursor must be between 0 and {2**31 - 1}"),
        (
            "SubmissionOptions",
            {"priority": "urgent"},
            "priority must be one of high, normal, low, got 'urgent'",
        ),
        ("SubmissionOptions", {"name": 5}, "name must be a string"),
        ("SubmissionOptions", {"model": "a:"}, "model must be NAME or NAME:VERSION"),
    ],
)
def test_the_models_of_the_document_check_requests_in_its_words(model, fields, detail):
    from api import schemas
    from api.fields import validated
    from api.problems import Problem

    with pytest.raises(Problem) as refused:
        validated(getattr(schemas, model), fields)
    assert refused.value.status == 400 and detail in refused.value.detail


def test_submission_options_are_read_as_a_form_is_and_sent_back_the_same():
    from api.fields import validated
    from api.schemas import SubmissionOptions, SubmitJobForm

    form = validated(
        SubmitJobForm,
        {
            "name": "  lungs ",
            "priority": "HIGH",
            "explain": "",
            "precision": "BF16",
            "open": "on",
            "csrf_token": "x",
        },
    )
    options = form.options()
    assert type(options) is SubmissionOptions and form.open is True
    assert options.form_fields() == {"name": "lungs", "priority": "high", "precision": "bf16"}
    assert SubmissionOptions.model_validate(options.form_fields()) == options
