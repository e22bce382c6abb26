"""A ZIP of a 120-slice CT series through the real stack: API, Redis, a Celery worker."""

import io

import numpy as np
import pytest

from db.series import aggregate
from tests import dicom_files as d
from tests.conftest import wait_for_job
from tests.dicom_validators import iod_errors

pytestmark = pytest.mark.integration

SLICES = 120


def test_a_zipped_series_is_ordered_and_aggregated_by_the_recorded_rule(stack_client):
    base = d.ct_dataset().pixel_array
    pixels = [np.clip(base.astype(np.int32) + 8 * i - 400, 0, 4000) for i in range(SLICES)]
    files, _ = d.ct_series(SLICES, seed=7, pixels=pixels)
    archive = d.zip_of({f"CT/{i:03d}": body for i, body in enumerate(files)})
    response = stack_client.post(
        "/v1/jobs",
        data={"files": [(io.BytesIO(archive), "ct.zip")]},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    final = wait_for_job(stack_client, job_id, timeout=300)
    assert final["status"] == "succeeded", final

    rows = stack_client.get(f"/v1/jobs/{job_id}/results?limit=1000").get_json()["results"]
    assert {r["preprocessing"] for r in rows} == {"seed-v1+dicom-window(1500,-600)"}
    body = stack_client.get(f"/v1/jobs/{job_id}/series?slices=1").get_json()
    [series] = body["series"]
    assert series["slice_count"] == SLICES and series["failed"] == 0
    assert series["rule"] == body["rule"] == "top10pct-mean"

    by_scan = {r["scan_id"]: r for r in rows}
    positions = [s["slice_position"] for s in series["slices"]]
    assert positions == sorted(positions) and len(set(positions)) == SLICES
    # the patient axis, not the (shuffled) upload order nor the instance numbers (reversed)
    assert [s["instance_number"] for s in series["slices"]] == list(range(SLICES, 0, -1))
    assert [by_scan[s["scan_id"]]["slice_position"] for s in series["slices"]] == positions
    assert [r["slice_position"] for r in rows] != positions  # uploaded shuffled

    probabilities = [r["probability_covid"] for r in rows]
    top = sorted(probabilities, reverse=True)[:12]  # 10 % of 120
    assert series["probability_covid"] == pytest.approx(sum(top) / 12)
    assert series["probability_covid"] == pytest.approx(aggregate(probabilities, "top10pct-mean"))
    assert series["label"] == ("COVID" if series["probability_covid"] >= 0.5 else "NonCOVID")
    assert len(set(probabilities)) > 1  # the slices differ, so the rule is not trivially met
    check_structured_report(stack_client, job_id, series, rows)


def check_structured_report(client, job_id, series, rows):
    """The series' SR, parsed back: TID 1500 content, every classified instance referenced,
    the algorithm named, research use only, and no patient identifier."""
    import highdicom as hd
    import pydicom

    response = client.get(f"/v1/jobs/{job_id}/series/{series['series_uid']}/sr")
    assert response.status_code == 200 and response.mimetype == "application/dicom"
    raw = response.get_data()
    dataset = pydicom.dcmread(io.BytesIO(raw))
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert dataset.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert dataset.ContentQualification == "RESEARCH"
    assert "research use only" in dataset.SeriesDescription
    assert dataset.StudyInstanceUID == series["study_uid"]
    referenced = {
        item.ReferencedSOPInstanceUID
        for study in dataset.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
        for item in s.ReferencedSOPSequence
    }
    assert len(referenced) == SLICES
    report = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    [group] = report.content.get_image_measurement_groups()
    [evaluation] = group.get_qualitative_evaluations()
    assert evaluation.name.meaning == "COVID-19"
    assert evaluation.value.meaning == ("Yes" if series["label"] == "COVID" else "No")
    [measurement] = group.get_measurements()
    assert measurement.value == pytest.approx(series["probability_covid"], abs=1e-6)
    texts = text_items(dataset)
    assert texts["Algorithm Name"] == [f"covidscan {rows[0]['model_name']}"]
    assert texts["Algorithm Version"] == [rows[0]["model_version"]]
    assert f"sha256={rows[0]['model_sha256']}" in texts["Algorithm Parameters"]
    assert "series rule=top10pct-mean" in texts["Algorithm Parameters"]
    assert "research use only" in texts["Algorithm Parameters"]
    for secret in (b"Doe", d.PATIENT_ID.encode(), d.ACCESSION.encode(), d.BIRTH_DATE.encode()):
        assert secret not in raw
    assert dataset.PatientIdentityRemoved == "YES" and dataset.StudyID == ""
    assert iod_errors(raw) == []


def text_items(dataset) -> dict[str, list[str]]:
    """Every TEXT content item of an SR, by its concept name's meaning."""
    found: dict[str, list[str]] = {}
    for item in dataset.get("ContentSequence", []):
        if item.get("ValueType") == "TEXT":
            found.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(item.TextValue)
        for meaning, values in text_items(item).items():
            found.setdefault(meaning, []).extend(values)
    return found
