"""DICOM at the API: recognised by content, read from the header only, limits applied,
non-images skipped with the reason, and no patient identifier in any answer or log."""

import io
import logging

import pytest

from core.intake.dicom_header import read_dicom_header
from tests import dicom_files as d
from tests.images import png_bytes


def post(client, files, **form):
    data = {"files": [(io.BytesIO(body), name) for name, body in files], **form}
    return client.post("/v1/jobs", data=data, content_type="multipart/form-data")


def results(client, job_id):
    return client.get(f"/v1/jobs/{job_id}/results").get_json()["results"]


def test_a_dicom_file_without_extension_is_accepted_with_its_place_in_the_series(client):
    dataset = d.ct_dataset()
    response = post(client, [("IM000001", d.ct_bytes())])
    assert response.status_code == 202, response.get_json()
    [row] = results(client, response.get_json()["id"])
    assert row["study_uid"] == dataset.StudyInstanceUID
    assert row["series_uid"] == dataset.SeriesInstanceUID
    assert row["instance_number"] == 1
    assert row["slice_position"] == pytest.approx(-75.7)  # z: the normal is (0, 0, 1)


def test_a_zip_of_folders_mixes_dicom_and_png_and_skips_what_is_not_a_ct_slice(client):
    slices, _ = d.ct_series(3)
    entries = {f"PAT/ST1/SE1/IM{i}": body for i, body in enumerate(slices)}
    entries.update(
        {
            "DICOMDIR": d.ct_bytes(SOPClassUID="1.2.840.10008.1.3.10"),
            "PAT/ST1/SR/report": d.structured_report(),
            "PAT/ST1/MR/IM0": d.ct_bytes(Modality="MR"),
            "slices/extra.png": png_bytes(32),
        }
    )
    response = post(client, [("study.zip", d.zip_of(entries))])
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["counts"]["total"] == 4
    reasons = {s["filename"]: s["reason"] for s in body["skipped"]}
    assert "DICOMDIR" in reasons["study.zip/DICOMDIR"]
    assert "without pixel data" in reasons["study.zip/PAT/ST1/SR/report"]
    assert "modality MR" in reasons["study.zip/PAT/ST1/MR/IM0"]
    rows = results(client, body["id"])
    assert sum(1 for r in rows if r["series_uid"]) == 3
    assert [r for r in rows if r["filename"] == "slices/extra.png"][0]["series_uid"] is None


def test_allow_modality_accepts_another_modality(client):
    response = post(client, [("mr", d.ct_bytes(Modality="MR"))], allow_modality="MR")
    assert response.status_code == 202, response.get_json()
    assert (
        post(client, [("mr", d.ct_bytes(Modality="MR"))], allow_modality="M R;").status_code == 400
    )


def test_only_non_images_is_a_400_listing_them(client):
    response = post(client, [("report.dcm", d.structured_report())])
    assert response.status_code == 400
    assert response.get_json()["skipped"][0]["filename"] == "report.dcm"


def test_each_frame_of_a_multi_frame_file_is_a_scan_in_patient_axis_order(client):
    response = post(client, [("enhanced", d.multiframe_ct(3, spacing=5.0))])
    assert response.status_code == 202, response.get_json()
    rows = results(client, response.get_json()["id"])
    assert [r["slice_position"] for r in rows] == [10.0, 5.0, 0.0]  # frames stored head first
    series = client.get(f"/v1/jobs/{response.get_json()['id']}/series?slices=1").get_json()
    [only] = series["series"]
    assert only["slice_count"] == 3
    assert [s["frame"] for s in only["slices"]] == [2, 1, 0]  # feet to head


def test_frames_count_against_the_scans_per_job_limit(app_config, api_key):
    from api import create_app
    from tests.conftest import authorised

    app = create_app({**app_config, "MAX_SCANS_PER_JOB": "2"})
    client = authorised(app.test_client(), api_key)
    response = post(client, [("enhanced", d.multiframe_ct(3))])
    assert response.status_code == 413
    assert "MAX_SCANS_PER_JOB" in response.get_json()["detail"]


def test_the_pixel_limit_applies_to_a_dicom_frame_from_its_header(app_config, api_key):
    from api import create_app
    from tests.conftest import authorised

    app = create_app({**app_config, "MAX_SCAN_PIXELS": str(128 * 127)})
    client = authorised(app.test_client(), api_key)
    response = post(client, [("big.dcm", d.ct_bytes())])
    assert response.status_code == 413
    assert "big.dcm is 128×128 pixels" in response.get_json()["detail"]


def test_a_dicom_header_that_lies_about_its_size_is_refused_before_decoding(client):
    header = read_dicom_header(d.ct_bytes(Rows=60000, Columns=60000), "liar.dcm")
    assert header.pixels == 3_600_000_000  # what the limit is checked against
    response = post(client, [("liar.dcm", d.ct_bytes(Rows=60000, Columns=60000))])
    assert response.status_code == 413
    assert "MAX_SCAN_PIXELS" in response.get_json()["detail"]


def test_a_truncated_dicom_file_is_a_400_naming_it(client):
    body = d.ct_bytes()
    response = post(client, [("cut.dcm", body[:-1000])])
    assert response.status_code == 400
    assert "cut.dcm" in response.get_json()["detail"]


def test_no_patient_identifier_is_returned_or_logged(client, caplog):
    slices, _ = d.ct_series(2)
    with caplog.at_level(logging.DEBUG):
        response = post(client, [(f"s{i}", body) for i, body in enumerate(slices)])
        job_id = response.get_json()["id"]
        answers = [
            response.get_data(),
            client.get(f"/v1/jobs/{job_id}/results").get_data(),
            client.get(f"/v1/jobs/{job_id}/results?format=csv").get_data(),
            client.get(f"/v1/jobs/{job_id}/series?slices=1").get_data(),
            client.get(f"/jobs/{job_id}").get_data(),
        ]
    text = b"".join(answers).decode() + caplog.text
    for secret in (d.PATIENT_NAME, "Doe", d.PATIENT_ID, d.ACCESSION, d.BIRTH_DATE):
        assert secret not in text
    assert "study_uid,series_uid,instance_number,slice_position" in answers[2].decode()


def test_malformed_patient_values_are_not_quoted_in_logs(client, caplog, tmp_path):
    from covidscan.dicom_pixels import grey_slice

    body = d.ct_bytes(PatientBirthDate="1950-01-01-SECRET", PatientName="Doe^Jane" * 12)
    with caplog.at_level(logging.DEBUG):
        response = post(client, [("odd.dcm", body)])
        grey_slice(body, 0, (1500, -600))
    assert response.status_code == 202
    assert "SECRET" not in caplog.text and "Doe" not in caplog.text


def test_the_structured_report_waits_for_results_and_names_an_unknown_series(client):
    response = post(client, [("ct", d.ct_bytes())])
    job_id = response.get_json()["id"]
    [row] = results(client, job_id)
    waiting = client.get(f"/v1/jobs/{job_id}/series/{row['series_uid']}/sr")
    assert waiting.status_code == 409 and "no slice" in waiting.get_json()["detail"]
    unknown = client.get(f"/v1/jobs/{job_id}/series/1.2.3/sr")
    assert unknown.status_code == 404 and "1.2.3" in unknown.get_json()["detail"]
