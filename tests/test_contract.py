"""The task name is the one contract between the API and the workers."""
import subprocess
import sys

from covidscan.contract import DELIVER_TASK, INFER_QUEUE, WAKE_TASK
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
    from worker.celery_app import app, configure
    from covidscan.settings import load_settings

    configure(app, load_settings({"REDIS_URL": "redis://127.0.0.1:1/0", "VISIBILITY_TIMEOUT": "7200"}))
    conf = app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.broker_transport_options["visibility_timeout"] == 7200
    assert conf.task_default_queue == INFER_QUEUE


def test_the_web_tier_imports_neither_the_worker_nor_tensorflow():
    code = ("import sys; from api import create_app; create_app({}); "
            "bad = [m for m in ('tensorflow', 'tf_keras', 'keras', 'cv2', 'worker', 'models') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_the_worker_loads_no_model_and_connects_nowhere():
    code = ("import sys; import worker.tasks; "
            "bad = [m for m in ('tensorflow', 'tf_keras') if m in sys.modules]; "
            "from worker import runtime; assert runtime._runtime is None; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_dicom_thumbnail_needs_nothing_the_api_image_lacks():
    """The API image holds api/, db/ and covidscan/ only: no models package, no OpenCV."""
    code = ("import sys; sys.modules['models'] = None; sys.modules['cv2'] = None; "
            "from pydicom.data import get_testdata_file; "
            "from api.thumbnails import make_dicom_thumbnail; "
            "data = open(get_testdata_file('CT_small.dcm'), 'rb').read(); "
            "jpeg = make_dicom_thumbnail(data, 0, (1500.0, -600.0), 4096 * 4096); "
            "print(jpeg[:3] == bytes([0xFF, 0xD8, 0xFF]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stdout + result.stderr
