"""Intended use: DICOM instances the model was not made for (localizers, slices that are not
axial, thick slices) are skipped with the rule and the value by every way in, a series of
too few slices gets no series result, and the rules are recorded with the job."""

from __future__ import annotations

import io

import pydicom
import pytest
from sqlalchemy import create_engine, inspect

from core.intake.dicom_header import NotAnImage, read_dicom_header
from core.intake.intended_use import IntendedUse
from covidscan.settings import ConfigError, load_settings
from tests import dicom_files as d
from tests.conftest import authorised
from tests.test_hostile_web import classify_all

LOCALIZER = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
SAGITTAL = [0, 1, 0, 0, 0, -1]
RULES = IntendedUse(max_slice_thickness_mm=5.0, min_series_slices=1)


def changed(body: bytes, **changes) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(body))
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    return d.to_bytes(dataset)


def thin_series(count: int, seed: int = 0) -> list[bytes]:
    """An axial series of 2.5 mm slices, 2.5 mm apart."""
    files, _ = d.ct_series(count, seed=seed)
    return [changed(body, SliceThickness=2.5) for body in files]


def post(client, files: dict[str, bytes]):
    data = {"files": [(io.BytesIO(body), name) for name, body in files.items()]}
    return client.post("/v1/jobs", data=data, content_type="multipart/form-data")


def app_client(app_config, api_key, **settings: str):
    from api import create_app

    return authorised(create_app({**app_config, **settings}).test_client(), api_key)


# --- The rules on one header ----------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"ImageType": LOCALIZER}, "a localizer or scout image (ImageType LOCALIZER)"),
        ({"ImageType": "LOCALIZER"}, "ImageType LOCALIZER"),  # one value, not a list
        ({"ImageOrientationPatient": SAGITTAL}, "a sagittal slice (its normal 90°"),
        ({"ImageOrientationPatient": [1, 0, 0, 0, 0, -1]}, "a coronal slice (its normal 90°"),
        (
            {"ImageOrientationPatient": [1, 0, 0, 0, 0.8, -0.6]},
            "an oblique slice (its normal 36.9°",
        ),
        ({"SliceThickness": 7}, "slice thickness 7 mm is above MAX_SLICE_THICKNESS_MM (5 mm)"),
        ({"SliceThickness": "5.01"}, "slice thickness 5.01 mm"),
    ],
)
def test_an_instance_outside_the_intended_use_is_not_an_image_to_classify(changes, reason):
    with pytest.raises(NotAnImage) as refused:
        read_dicom_header(d.ct_bytes(**changes), "x.dcm", intended=RULES)
    assert reason in str(refused.value)
    assert "outside the model's intended use" in str(refused.value)
    read_dicom_header(d.ct_bytes(**changes), "x.dcm")  # without rules (a stored scan): kept


@pytest.mark.parametrize(
    "changes",
    [
        {},  # CT_small: axial, 5 mm (at the limit, not above it)
        {"SliceThickness": 2.5},
        {"ImageOrientationPatient": [1, 0, 0, 0, 0.866, -0.5]},  # a 30° gantry tilt
        {"ImageOrientationPatient": [1, 0, 0, 0, 0.94, -0.34]},  # 20°
        {"ImageOrientationPatient": [-1, 0, 0, 0, 1, 0]},  # feet first: the normal is -z
        {"ImageType": ["DERIVED", "SECONDARY", "AXIAL"]},
    ],
)
def test_an_axial_slice_within_the_rules_is_kept(changes):
    header = read_dicom_header(d.ct_bytes(**changes), "x.dcm", intended=RULES)
    assert header.frames == 1


@pytest.mark.parametrize("keyword", ["ImageOrientationPatient", "SliceThickness", "ImageType"])
def test_an_attribute_not_declared_does_not_refuse_the_instance(keyword):
    dataset = d.ct_dataset()
    delattr(dataset, keyword)
    read_dicom_header(d.to_bytes(dataset), "x.dcm", intended=RULES)


def test_a_multi_frame_image_is_judged_by_its_functional_groups():
    body = d.multiframe_ct(3)
    dataset = pydicom.dcmread(io.BytesIO(body))
    del dataset.ImageOrientationPatient, dataset.SliceThickness
    read_dicom_header(d.to_bytes(dataset), "mf.dcm", intended=RULES)
    plane = dataset.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    plane.ImageOrientationPatient = SAGITTAL
    with pytest.raises(NotAnImage, match="sagittal"):
        read_dicom_header(d.to_bytes(dataset), "mf.dcm", intended=RULES)
    plane.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures = pydicom.Dataset()
    measures.SliceThickness = 8
    dataset.PerFrameFunctionalGroupsSequence[1].PixelMeasuresSequence = [measures]
    with pytest.raises(NotAnImage, match="slice thickness 8 mm"):
        read_dicom_header(d.to_bytes(dataset), "mf.dcm", intended=RULES)


def test_the_settings_are_checked_and_name_the_variable():
    base = {"DATABASE_URL": "sqlite://"}
    settings = load_settings(base)
    assert (settings.max_slice_thickness_mm, settings.min_series_slices) == (5.0, 1)
    chosen = load_settings({**base, "MAX_SLICE_THICKNESS_MM": "2.5", "MIN_SERIES_SLICES": "20"})
    assert IntendedUse.from_settings(chosen) == IntendedUse(2.5, 20)
    for name, bad in [
        ("MAX_SLICE_THICKNESS_MM", "0"),
        ("MAX_SLICE_THICKNESS_MM", "thin"),
        ("MAX_SLICE_THICKNESS_MM", "nan"),
        ("MIN_SERIES_SLICES", "0"),
        ("MIN_SERIES_SLICES", "2.5"),
    ]:
        with pytest.raises(ConfigError, match=name):
            load_settings({**base, name: bad})


# --- Every way in -----------------------------------------------------------------------------


@pytest.mark.database
def test_post_jobs_skips_each_instance_with_its_rule_and_keeps_the_axial_series(client):
    series = thin_series(3)
    response = post(
        client,
        {
            **{f"SE1/IM{i}": body for i, body in enumerate(series)},
            "scout.dcm": d.ct_bytes(ImageType=LOCALIZER),
            "sagittal.dcm": d.ct_bytes(ImageOrientationPatient=SAGITTAL),
            "thick.dcm": d.ct_bytes(SliceThickness=7),
        },
    )
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["counts"]["total"] == 3
    reasons = {s["filename"]: s["reason"] for s in body["skipped"]}
    assert set(reasons) == {"scout.dcm", "sagittal.dcm", "thick.dcm"}
    assert "localizer" in reasons["scout.dcm"]
    assert "sagittal slice (its normal 90°" in reasons["sagittal.dcm"]
    assert "slice thickness 7 mm is above MAX_SLICE_THICKNESS_MM (5 mm)" in reasons["thick.dcm"]
    for secret in (d.PATIENT_NAME, "Doe", d.PATIENT_ID, d.ACCESSION, d.BIRTH_DATE):
        assert secret not in response.get_data(as_text=True)
    assert body["intended_use"] == {
        "skip_localizers": True,
        "axial_tolerance_degrees": 30.0,
        "max_slice_thickness_mm": 5.0,
        "min_series_slices": 1,
    }


@pytest.mark.database
def test_only_instances_outside_the_intended_use_is_a_400_listing_them(client):
    response = post(client, {"scout.dcm": d.ct_bytes(ImageType=LOCALIZER)})
    assert response.status_code == 400
    assert "localizer" in response.get_json()["skipped"][0]["reason"]


@pytest.mark.database
def test_the_thickness_limit_is_the_setting_and_is_recorded_with_the_job(app_config, api_key):
    client = app_client(app_config, api_key, MAX_SLICE_THICKNESS_MM="2")
    response = post(
        client,
        {"thin.dcm": d.ct_bytes(SliceThickness=1.25), "usual.dcm": d.ct_bytes(SliceThickness=2.5)},
    )
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    [skipped] = body["skipped"]
    assert skipped["filename"] == "usual.dcm"
    assert "slice thickness 2.5 mm is above MAX_SLICE_THICKNESS_MM (2 mm)" in skipped["reason"]
    job = client.get(f"/v1/jobs/{body['id']}").get_json()
    assert job["intended_use"]["max_slice_thickness_mm"] == 2.0
    [listed] = client.get("/v1/jobs").get_json()["jobs"]
    assert listed["intended_use"] == job["intended_use"]


@pytest.mark.database
def test_stow_rs_fails_an_instance_outside_the_intended_use_with_0x0122(client):
    axial = thin_series(1)[0]
    scout = d.ct_bytes(ImageType=LOCALIZER)
    boundary = "XyZ"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            for part in (axial, scout)
        )
        + f"--{boundary}--\r\n".encode()
    )
    response = client.post(
        "/v1/dicomweb/studies",
        data=body,
        content_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    answer = response.get_json()
    [stored] = answer["00081199"]["Value"]
    assert stored["00081155"]["Value"] == [pydicom.dcmread(io.BytesIO(axial)).SOPInstanceUID]
    [failed] = answer["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0x0122]
    assert failed["00081155"]["Value"] == [pydicom.dcmread(io.BytesIO(scout)).SOPInstanceUID]
    assert "localizer" in failed["00000902"]["Value"][0]


@pytest.mark.integration
def test_c_store_refuses_an_instance_outside_the_intended_use_with_0x0122(app_config):
    from pynetdicom import AE

    from tests.dicom_listener import dicom_listener

    thick = pydicom.dcmread(io.BytesIO(d.ct_bytes(SliceThickness=7)))
    axial = pydicom.dcmread(io.BytesIO(thin_series(1)[0]))
    sender = AE(ae_title="ORTHANC")
    sender.add_requested_context(thick.SOPClassUID, thick.file_meta.TransferSyntaxUID)
    with dicom_listener(app_config) as port:
        association = sender.associate("127.0.0.1", port, ae_title="COVIDSCAN")
        assert association.is_established
        try:
            statuses = [association.send_c_store(ds).Status for ds in (thick, axial)]
        finally:
            association.release()
    assert statuses == [0x0122, 0x0000]


# --- A series of too few slices ----------------------------------------------------------------


@pytest.mark.database
def test_a_series_of_fewer_than_min_series_slices_gets_no_result_with_the_reason(
    app_config, api_key
):
    client = app_client(app_config, api_key, MIN_SERIES_SLICES="3")
    short, full = thin_series(2, seed=1), thin_series(3, seed=2)
    response = post(
        client,
        {
            **{f"short{i}": b for i, b in enumerate(short)},
            **{f"full{i}": b for i, b in enumerate(full)},
        },
    )
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    assert response.get_json()["intended_use"]["min_series_slices"] == 3
    classify_all(app_config["DATABASE_URL"], 0.8)
    short_uid = str(pydicom.dcmread(io.BytesIO(short[0])).SeriesInstanceUID)
    full_uid = str(pydicom.dcmread(io.BytesIO(full[0])).SeriesInstanceUID)

    def series_of(test_client) -> dict[str, dict]:
        answer = test_client.get(f"/v1/jobs/{job_id}/series").get_json()
        return {s["series_uid"]: s for s in answer["series"]}

    found = series_of(client)
    assert found[full_uid]["probability_covid"] == pytest.approx(0.8)
    assert found[full_uid]["label"] == "COVID" and found[full_uid]["skipped"] is None
    assert found[short_uid]["slice_count"] == 2 and found[short_uid]["succeeded"] == 2
    assert found[short_uid]["probability_covid"] is None and found[short_uid]["label"] is None
    reason = found[short_uid]["skipped"]
    assert "2 slice(s), fewer than the 3" in reason and "MIN_SERIES_SLICES" in reason
    report = client.get(f"/v1/jobs/{job_id}/series/{short_uid}/sr")
    assert report.status_code == 409
    assert reason in report.get_json()["detail"]
    assert client.get(f"/v1/jobs/{job_id}/series/{full_uid}/sr").status_code == 200
    # The job keeps the rule it was submitted under, whatever the setting is now.
    now_default = app_client(app_config, api_key)
    assert series_of(now_default)[short_uid]["skipped"] == reason


@pytest.mark.database
def test_by_default_every_series_gets_its_result(client, app_config):
    response = post(client, {"only.dcm": thin_series(1)[0]})
    classify_all(app_config["DATABASE_URL"], 0.3)
    [series] = client.get(f"/v1/jobs/{response.get_json()['id']}/series").get_json()["series"]
    assert series["skipped"] is None and series["probability_covid"] == pytest.approx(0.3)


# --- The column ----------------------------------------------------------------------------------


@pytest.mark.database
def test_the_intended_use_column_comes_and_goes_with_its_revision(database_url):
    from db import migrate

    def job_columns() -> set[str]:
        engine = create_engine(database_url)
        try:
            return {column["name"] for column in inspect(engine).get_columns("jobs")}
        finally:
            engine.dispose()

    assert "intended_use" in job_columns()
    migrate.downgrade(database_url, "0013_destinations")
    assert "intended_use" not in job_columns() and "series_rule" in job_columns()
    migrate.upgrade(database_url)
    assert "intended_use" in job_columns()
