"""Storage Commitment with a real PACS: we ask Orthanc to commit to what it was sent, and
its report (an N-EVENT-REPORT over an association it opens to the listener) moves the
export rows of that transaction to ``committed`` or ``failed``."""

from __future__ import annotations

import io
import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from covidscan.contract import ExportState
from covidscan.settings import load_settings
from db.jobs import JobOptions, create_job
from db.models import Export, new_id
from db.session import make_engine, make_session_factory
from devtools.embedded_redis import free_port
from dicomnet.commitment import NO_ANSWER, request_commitment, requested_context
from tests import dicom_files as d
from tests.pacs import Orthanc, require_orthanc

pytestmark = pytest.mark.integration

AE_TITLE = "COVIDSCAN"


@pytest.fixture
def sessions(app_config):
    engine = make_engine(app_config["DATABASE_URL"])
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def listener_port(app_config):
    from dicomnet.listener import start

    port = free_port()
    _server, stop = start(load_settings(app_config), "127.0.0.1", port, AE_TITLE, "radiology", ())
    yield port
    stop()


@pytest.fixture
def orthanc(tmp_path, listener_port):
    require_orthanc()
    with Orthanc(
        tmp_path / "orthanc", free_port(), free_port(), {"covidscan": (AE_TITLE, listener_port)}
    ) as pacs:
        yield pacs


def stored_export(sessions, sop_instance_uid: str, transaction_uid: str) -> str:
    """An export the exporter would have made: stored, its commitment asked under
    ``transaction_uid``."""
    with sessions.begin() as session:
        job = create_job(session, [], new_id(), JobOptions(owner="radiology"))
        session.flush()
        export = Export(
            job_id=job.id,
            owner="radiology",
            destination="pacs",
            series_uid=generate_uid(),
            results_series_uid=generate_uid(),
            sop_instance_uid=sop_instance_uid,
            state=ExportState.STORED.value,
            transaction_uid=transaction_uid,
        )
        session.add(export)
        session.flush()
        return export.id


def store_and_ask(orthanc: Orthanc, instance: bytes, asked: list[tuple[str, str]], uid: str) -> int:
    """C-STORE ``instance`` to Orthanc as our AE, then ask it to commit to ``asked``."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title=AE_TITLE)
    ae.add_requested_context(CTImageStorage)
    ae.requested_contexts = [*ae.requested_contexts, requested_context()]
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.ae_title)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(pydicom.dcmread(io.BytesIO(instance))).Status == 0x0000
        return request_commitment(assoc, uid, asked)
    finally:
        assoc.release()


def wait_for_state(sessions, export_id: str, timeout: float = 30.0) -> Export:
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            export = session.get(Export, export_id)
            assert export is not None
            if export.state != ExportState.STORED.value or time.monotonic() > deadline:
                return export
        time.sleep(0.2)


def test_the_pacs_report_commits_the_export(orthanc, sessions, caplog):
    instance = d.ct_bytes(SOPInstanceUID=generate_uid())
    dataset = pydicom.dcmread(io.BytesIO(instance))
    transaction = generate_uid()
    export_id = stored_export(sessions, dataset.SOPInstanceUID, transaction)
    with caplog.at_level("INFO", logger="dicomnet"):
        status = store_and_ask(
            orthanc, instance, [(dataset.SOPClassUID, dataset.SOPInstanceUID)], transaction
        )
        assert status == 0x0000
        export = wait_for_state(sessions, export_id)
    assert export.state == ExportState.COMMITTED.value, orthanc.log_path.read_text()[-3000:]
    assert export.committed_at is not None and export.error is None
    [line] = [
        r.getMessage() for r in caplog.records if "Storage Commitment report" in r.getMessage()
    ]
    assert transaction in line and "1 instance(s) committed, 0 failed" in line


def test_an_instance_the_pacs_does_not_hold_fails_with_the_reason(orthanc, sessions):
    instance = d.ct_bytes(SOPInstanceUID=generate_uid())
    dataset = pydicom.dcmread(io.BytesIO(instance))
    missing = generate_uid()
    transaction = generate_uid()
    kept = stored_export(sessions, dataset.SOPInstanceUID, transaction)
    lost = stored_export(sessions, missing, transaction)
    status = store_and_ask(
        orthanc,
        instance,
        [(dataset.SOPClassUID, dataset.SOPInstanceUID), (dataset.SOPClassUID, missing)],
        transaction,
    )
    assert status not in (NO_ANSWER,) and status == 0x0000
    failed = wait_for_state(sessions, lost)
    assert failed.state == ExportState.FAILED.value, orthanc.log_path.read_text()[-3000:]
    assert failed.error == "Storage Commitment failed: 0x0112 no such object instance"
    assert wait_for_state(sessions, kept).state == ExportState.COMMITTED.value
