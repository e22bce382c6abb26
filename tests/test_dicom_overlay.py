"""A series' Grad-CAM overlay as a DICOM Secondary Capture, and the series' SR, as an export
makes them: with the UIDs it gives (the same on every attempt), conformant (dciodvfy finds
no error), readable by highdicom, in the study of their slices and de-identified.

The builders are checked on synthetic pictures; the series functions on a real database
and blob store, with scans and explanations written as a worker writes them, and once
through the worker's own Grad-CAM rendering (a fake explainer, no TensorFlow).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from core.deidentify import TYPE_2
from core.reports.secondary_capture import build_overlay, patient_orientation
from core.reports.sr import RESEARCH_ONLY, SeriesFinding, build_report, evidence_header
from tests import dicom_files as d
from tests.dicom_validators import iod_errors
from tests.test_dicom_deidentify import SECRETS, source_series
from tests.test_hostile_web import classify_all, rows_of, submit

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
FINDING = SeriesFinding(0.91, True, "top10pct-mean", "tiny", "1", "a" * 64, "seed-v1")
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian: the last element


def picture(rows: int = 6, columns: int = 9) -> np.ndarray:
    """RGB values 128-255: no byte of it is ASCII, so no secret can appear in it by chance."""
    values = np.arange(rows * columns * 3, dtype=np.uint16) % 128 + 128
    return values.astype(np.uint8).reshape(rows, columns, 3)


def header_bytes(raw: bytes) -> bytes:
    """A Part 10 object's bytes before its pixel data."""
    return raw.split(PIXEL_DATA_TAG)[0]


def assert_no_patient_value(raw: bytes) -> None:
    """What tests/test_dicom_deidentify.py asks of the SR, asked of any derived object."""
    head = header_bytes(raw)
    for secret in SECRETS:
        assert secret.encode() not in head, secret
    dataset = pydicom.dcmread(io.BytesIO(raw))
    for keyword in TYPE_2:
        assert keyword in dataset and not dataset[keyword].value, keyword
    for keyword in ("PatientAge", "PatientWeight", "StudyDescription", "InstitutionName"):
        assert keyword not in dataset, keyword
    assert not any(element.tag.is_private for element in dataset)
    assert dataset.PatientIdentityRemoved == "YES"
    assert {c.CodeValue for c in dataset.DeidentificationMethodCodeSequence} == {
        "113100",
        "113110",
    }


# --- The builders -----------------------------------------------------------------------------


def test_an_overlay_is_a_conformant_secondary_capture_of_its_slice():
    import highdicom as hd

    files, _ = source_series(1)
    source = pydicom.dcmread(io.BytesIO(files[0]))
    results, uid = generate_uid(), generate_uid()
    pixels = picture()
    raw = build_overlay(
        evidence_header(files[0]),
        pixels,
        FINDING,
        series_instance_uid=results,
        sop_instance_uid=uid,
        instance_number=2,
        orientation=("L", "P"),
        slice_probability=0.97,
    )
    assert iod_errors(raw) == []
    image = hd.imread(raw)
    assert (image.SOPClassUID, image.SOPInstanceUID, image.SeriesInstanceUID) == (
        SECONDARY_CAPTURE,
        uid,
        results,
    )
    assert image.StudyInstanceUID == source.StudyInstanceUID
    assert image.pixel_array.shape == (6, 9, 3) and image.PhotometricInterpretation == "RGB"
    assert np.array_equal(image.pixel_array, pixels) and image.BitsAllocated == 8
    assert (image.SeriesDescription, image.BurnedInAnnotation) == (RESEARCH_ONLY, "YES")
    assert image.ImageComments.startswith(RESEARCH_ONLY) and "0.970" in image.ImageComments
    assert list(image.PatientOrientation) == ["L", "P"] and image.InstanceNumber == 2
    (reference,) = image.SourceImageSequence
    assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == (
        source.SOPClassUID,
        source.SOPInstanceUID,
    )
    assert "ReferencedFrameNumber" not in reference
    assert "Grad-CAM" in image.DerivationDescription
    assert_no_patient_value(raw)


def test_the_uids_given_are_the_ones_in_both_objects_on_every_build():
    import highdicom as hd

    files, ordered = source_series(2)
    evidence = [evidence_header(raw) for raw in files]
    results, overlays_series = generate_uid(), generate_uid()
    report_uid, overlay_uid = generate_uid(), generate_uid()
    reports = [
        build_report(
            evidence,
            FINDING,
            {},
            series_instance_uid=results,
            sop_instance_uid=report_uid,
            series_number=7,
        )
        for _ in range(2)
    ]
    overlays = [
        build_overlay(
            evidence[0],
            picture(),
            FINDING,
            series_instance_uid=overlays_series,
            sop_instance_uid=overlay_uid,
            instance_number=2,
        )
        for _ in range(2)
    ]
    for raw in reports:
        report = hd.sr.srread(io.BytesIO(raw))
        assert (report.SOPInstanceUID, report.SeriesInstanceUID, report.SeriesNumber) == (
            report_uid,
            results,
            7,
        )
        assert iod_errors(raw) == []
    for raw in overlays:
        image = hd.imread(raw)
        assert (image.SOPInstanceUID, image.SeriesInstanceUID) == (overlay_uid, overlays_series)
        assert "PatientOrientation" in image and not image.PatientOrientation  # unknown
        assert iod_errors(raw) == []
    unnamed = pydicom.dcmread(io.BytesIO(build_report(evidence, FINDING, {})))
    assert unnamed.SOPInstanceUID not in (report_uid, overlay_uid)
    assert unnamed.SeriesInstanceUID != results and unnamed.SeriesNumber == 9901
    assert hd.imread(overlays[0]).SeriesNumber == 9902  # a series of its own: Modality OT


def test_an_overlay_of_a_multi_frame_slice_references_its_frame():
    dataset = pydicom.dcmread(io.BytesIO(d.multiframe_ct(3)))
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    raw = build_overlay(
        evidence_header(d.to_bytes(dataset)),
        picture(),
        FINDING,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        instance_number=1,
        frame=2,
    )
    (reference,) = pydicom.dcmread(io.BytesIO(raw)).SourceImageSequence
    assert (reference.ReferencedSOPClassUID, reference.ReferencedFrameNumber) == (ENHANCED_CT, 2)
    assert iod_errors(raw) == []


@pytest.mark.parametrize(
    ("cosines", "expected"),
    [
        ([1, 0, 0, 0, 1, 0], ("L", "P")),  # axial
        ([1, 0, 0, 0, 0, -1], ("L", "F")),  # coronal
        ([0, 1, 0, 0, 0, -1], ("P", "F")),  # sagittal
        ([-0.9, 0.1, 0, 0.1, 0.9, -0.3], ("R", "P")),  # oblique: the main axis
        ([1, 0, 0], None),
        (None, None),
    ],
)
def test_patient_orientation_follows_the_direction_cosines(cosines, expected):
    header = pydicom.Dataset()
    if cosines is not None:
        header.ImageOrientationPatient = cosines
    assert patient_orientation(header) == expected


@pytest.mark.parametrize("shape", [(4, 4), (4, 4, 4), (4, 4, 1)])
def test_an_overlay_that_is_not_rgb_is_refused(shape):
    files, _ = source_series(1)
    with pytest.raises(ValueError, match="rows, columns, 3"):
        build_overlay(
            evidence_header(files[0]),
            np.zeros(shape, np.uint8),
            FINDING,
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
            instance_number=1,
        )


# --- A series' SR and overlay, from SQL and the blob store ------------------------------------


def png_of(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def explain(database_url: str, scan_ids: dict[str, np.ndarray | None]) -> None:
    """What a worker writes for a done explanation, with ``pixels`` as its overlay (bytes
    that are no picture for None)."""
    from db.explanations import GRADCAM
    from db.models import Explanation, Scan, ScanStatus, utcnow
    from db.session import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine).begin() as session:
            for scan_id, pixels in scan_ids.items():
                job_id = session.get(Scan, scan_id).job_id
                session.add(
                    Explanation(
                        scan_id=scan_id,
                        job_id=job_id,
                        method=GRADCAM,
                        status=ScanStatus.SUCCEEDED,
                        queued_at=utcnow(),
                        finished_at=utcnow(),
                        attempts=1,
                        overlay_png=b"no picture" if pixels is None else png_of(pixels),
                    )
                )
    finally:
        engine.dispose()


def set_probabilities(database_url: str, probabilities: dict[str, float]) -> None:
    from db.models import Scan
    from db.session import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine).begin() as session:
            for scan_id, probability in probabilities.items():
                session.get(Scan, scan_id).probability_covid = probability
    finally:
        engine.dispose()


class Series:
    """Calls the core's series functions as an export would: its own session and store."""

    def __init__(self, app_config, job_id: str) -> None:
        from db.blobs import FileBlobStore
        from db.session import make_engine, make_session_factory

        self.engine = make_engine(app_config["DATABASE_URL"])
        self.sessions = make_session_factory(self.engine)
        self.blobs = FileBlobStore(app_config["BLOB_DIR"])
        self.job_id = job_id

    def document(self, series_uid: str, **uids):
        from core.reports.series import series_document
        from db.models import Job

        with self.sessions() as session:
            job = session.get(Job, self.job_id)
            return series_document(session, self.blobs, 10**8, job, series_uid, **uids)

    def overlays(self, series_uid: str, **uids):
        from core.reports.series import series_overlays
        from db.models import Job

        with self.sessions() as session:
            job = session.get(Job, self.job_id)
            return series_overlays(session, self.blobs, 10**8, job, series_uid, **uids)


@pytest.mark.database
def test_a_series_overlay_shows_its_most_likely_explained_slice(client, app_config):
    import highdicom as hd

    files, _ = source_series(3)
    named = {f"s{i}.dcm": raw for i, raw in enumerate(files)}
    job = submit(client, named)
    classify_all(app_config["DATABASE_URL"])
    rows = sorted(rows_of(client, job["id"]).values(), key=lambda r: r["filename"])
    series_uid = rows[0]["series_uid"]
    series = Series(app_config, job["id"])
    results, overlays_series = generate_uid(), generate_uid()
    try:
        nothing = series.overlays(series_uid, series_instance_uid=overlays_series)
        assert nothing.documents == () and nothing.scan_ids == ()
        assert "has a Grad-CAM explanation" in nothing.skipped
        # The likeliest slice has no explanation: the likeliest of those that have one shows.
        likeliest, second, third = rows
        set_probabilities(
            app_config["DATABASE_URL"],
            {likeliest["scan_id"]: 0.99, second["scan_id"]: 0.9, third["scan_id"]: 0.2},
        )
        pictures = {second["scan_id"]: picture(5, 7), third["scan_id"]: picture(8, 3)}
        explain(app_config["DATABASE_URL"], pictures)
        overlay_uid, report_uid = generate_uid(), generate_uid()
        made = series.overlays(
            series_uid,
            series_instance_uid=overlays_series,
            sop_instance_uid=overlay_uid,
            instance_number=2,
        )
        report = series.document(
            series_uid, series_instance_uid=results, sop_instance_uid=report_uid
        )
    finally:
        series.engine.dispose()
    assert made.skipped is None and made.scan_ids == (second["scan_id"],)
    (raw,) = made.documents
    image = hd.imread(raw)
    assert (image.SOPInstanceUID, image.SeriesInstanceUID, image.InstanceNumber) == (
        overlay_uid,
        overlays_series,
        2,
    )
    assert np.array_equal(image.pixel_array, pictures[second["scan_id"]])
    shown = pydicom.dcmread(io.BytesIO(named[second["filename"]]))
    assert image.SourceImageSequence[0].ReferencedSOPInstanceUID == shown.SOPInstanceUID
    assert list(image.PatientOrientation) == ["L", "P"]  # CT_small is axial
    assert image.StudyInstanceUID == rows[0]["study_uid"] and "0.900" in image.ImageComments
    assert_no_patient_value(raw)
    assert iod_errors(raw) == []
    sr = hd.sr.srread(io.BytesIO(report))
    assert (sr.SOPInstanceUID, sr.SeriesInstanceUID) == (report_uid, results)
    assert sr.StudyInstanceUID == image.StudyInstanceUID
    assert_no_patient_value(report)
    assert iod_errors(report) == []


@pytest.mark.database
def test_a_series_without_a_result_or_stored_slices_is_refused_by_kind(client, app_config):
    from core.errors import Conflict, Gone, NotFound

    job = submit(client, {"ct.dcm": d.ct_bytes()})
    (row,) = rows_of(client, job["id"]).values()
    series = Series(app_config, job["id"])
    try:
        with pytest.raises(Conflict, match="has a result yet"):
            series.overlays(row["series_uid"], series_instance_uid=generate_uid())
        classify_all(app_config["DATABASE_URL"])
        with pytest.raises(NotFound, match="has no DICOM series '1.2.3'"):
            series.document("1.2.3")
        for blob in (Path(app_config["BLOB_DIR"]) / job["id"]).iterdir():
            blob.unlink()
        with pytest.raises(Gone, match="stored slices of series"):
            series.document(row["series_uid"])
    finally:
        series.engine.dispose()
    answer = client.get(f"/v1/jobs/{job['id']}/series/{row['series_uid']}/sr")
    assert answer.status_code == 410, answer.get_json()
    assert (
        answer.get_json()["detail"] == f"the stored slices of series {row['series_uid']} are gone"
    )


@pytest.mark.database
def test_the_overlay_of_a_worker_made_explanation(client, app_config, tmp_path):
    """Scans classified and explained by the worker's drain (the fake engine and explainer
    of tests/test_drain.py and tests/test_explain_drain.py, the real decoding and Grad-CAM
    rendering): the overlay is the stored picture, of the slice the engine found likeliest."""
    import highdicom as hd
    from PIL import Image
    from sqlalchemy import select
    from sqlalchemy.orm import undefer

    from db.models import Explanation
    from tests.test_drain import Engine
    from tests.test_explain_drain import Models, RecordingExplainer
    from tests.test_explain_drain import runtime_with as worker_runtime
    from worker.drain import drain

    stored = [np.full((128, 128), value, np.int16) for value in (900, 1100, 1000)]
    files, _ = d.ct_series(3, pixels=stored)
    data = {"files": [(io.BytesIO(raw), f"s{i}.dcm") for i, raw in enumerate(files)]}
    data["explain"] = "gradcam"
    answer = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert answer.status_code == 202, answer.get_json()
    job_id = answer.get_json()["id"]
    engine = Engine()
    runtime = worker_runtime(
        app_config["DATABASE_URL"], tmp_path, Models(engine, RecordingExplainer(engine))
    )
    try:
        assert drain(runtime).explained == 3
        with runtime.session_factory() as session:
            pictures = {
                e.scan_id: e.overlay_png
                for e in session.scalars(
                    select(Explanation)
                    .where(Explanation.job_id == job_id)
                    .options(undefer(Explanation.overlay_png))
                )
            }
    finally:
        runtime.close()
    rows = list(rows_of(client, job_id).values())
    likeliest = max(rows, key=lambda r: r["probability_covid"])
    assert len({r["probability_covid"] for r in rows}) == 3, rows
    series = Series(app_config, job_id)
    try:
        made = series.overlays(rows[0]["series_uid"], series_instance_uid=generate_uid())
    finally:
        series.engine.dispose()
    assert made.scan_ids == (likeliest["scan_id"],)
    (raw,) = made.documents
    expected = np.asarray(Image.open(io.BytesIO(pictures[likeliest["scan_id"]])).convert("RGB"))
    image = hd.imread(raw)
    assert image.pixel_array.shape == expected.shape and expected.shape[2] == 3
    assert np.array_equal(image.pixel_array, expected)
    assert iod_errors(raw) == []


@pytest.mark.database
def test_a_stored_overlay_that_cannot_be_read_is_unusable_by_name(client, app_config):
    from core.errors import Unusable

    job = submit(client, {"ct.dcm": d.ct_bytes()})
    classify_all(app_config["DATABASE_URL"])
    (row,) = rows_of(client, job["id"]).values()
    explain(app_config["DATABASE_URL"], {row["scan_id"]: None})
    series = Series(app_config, job["id"])
    try:
        with pytest.raises(Unusable, match="stored Grad-CAM picture cannot be read"):
            series.overlays(row["series_uid"], series_instance_uid=generate_uid())
    finally:
        series.engine.dispose()
