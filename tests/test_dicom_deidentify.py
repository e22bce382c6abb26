"""The series' SR is de-identified by PS3.15's Basic Application Level Confidentiality Profile:
none of the source's patient, study or equipment values reaches it, the profile is recorded,
and it still references every instance of its study and passes dciodvfy.

The route's SR is fetched through the Flask test client with a real database; the scans'
results are written as a worker would (no Celery worker is needed).
"""

from __future__ import annotations

import copy
import io

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from core.deidentify import BASIC_PROFILE, TYPE_2, Action, action, deidentified
from tests import dicom_files as d
from tests.dicom_validators import iod_errors
from tests.test_hostile_web import classify_all, rows_of, submit

# Values no derived object may carry; the Study ID equals the Patient ID, as some PACS set it.
SOURCE = {
    "StudyID": d.PATIENT_ID,
    "PatientSex": "F",
    "PatientAge": "071Y",
    "PatientWeight": "83.25",
    "PatientSize": "1.67",
    "StudyDate": "19991230",
    "StudyTime": "101112",
    "StudyDescription": "CHEST CT SECRET-DESC",
    "ReferringPhysicianName": "Referrer^Secret",
    "InstitutionName": "SECRET GENERAL HOSPITAL",
    "InstitutionAddress": "1 Secret Street",
    "StationName": "SECRETSTATION",
    "DeviceSerialNumber": "SN-SECRET-99",
    "OtherPatientIDs": "OTHER-ID-SECRET",
    "IssuerOfPatientID": "ISSUER-SECRET",
    "PatientBirthTime": "045959",
    "PatientComments": "comment SECRET",
    "AdditionalPatientHistory": "history SECRET",
    "EthnicGroup": "ETHNIC-SECRET",
    "Occupation": "JOB-SECRET",
    "MedicalAlerts": "ALERT-SECRET",
    "Allergies": "ALLERGY-SECRET",
    "NameOfPhysiciansReadingStudy": "Reader^Secret",
    "PhysiciansOfRecord": "Record^Secret",
    "ClinicalTrialSubjectID": "TRIAL-SUBJ-SECRET",
    "ClinicalTrialSiteName": "TRIAL-SITE-SECRET",
}
SECRETS = [
    d.PATIENT_NAME,
    "Doe",
    d.PATIENT_ID,
    d.ACCESSION,
    d.BIRTH_DATE,
    *(v for k, v in SOURCE.items() if k not in ("PatientSex",)),
    "JFK IMAGING CENTER",  # CT_small's own institution and station
    "CT01_OC0",
]


def source_series(count: int = 3) -> tuple[list[bytes], list[str]]:
    """A CT series whose every header carries all of ``SOURCE`` (and a private element)."""
    files, ordered = d.ct_series(count)
    changed = []
    for raw in files:
        dataset = pydicom.dcmread(io.BytesIO(raw))
        for keyword, value in SOURCE.items():
            setattr(dataset, keyword, value)
        reference = Dataset()
        reference.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        reference.ReferencedSOPInstanceUID = "1.2.3.4.5.6"
        dataset.ReferencedStudySequence = Sequence([reference])
        changed.append(d.to_bytes(dataset))
    return changed, ordered


# --- The profile's table and actions ---------------------------------------------------------


def test_every_keyword_of_the_table_is_a_dicom_attribute():
    from pydicom.datadict import tag_for_keyword

    unknown = [k for k in BASIC_PROFILE if tag_for_keyword(k) is None]
    assert unknown == []
    assert all(set(v.split("/")) <= {"X", "Z", "D", "U"} for v in BASIC_PROFILE.values())


def test_the_actions_keep_uids_empty_type_2_and_remove_the_rest():
    assert action("StudyInstanceUID") is action("SOPInstanceUID") is Action.KEEP
    assert action("SOPClassUID") is Action.KEEP
    for keyword in TYPE_2:
        assert action(keyword) is Action.ZERO, keyword
    for keyword in ("PatientAge", "PatientWeight", "PatientSize", "StudyDescription"):
        assert action(keyword) is Action.REMOVE
    assert action("InstitutionName") is Action.REMOVE  # X/Z/D, Type 3: X
    assert action("ClinicalTrialSubjectID") is Action.REMOVE  # the module is not carried
    assert action("PatientSpeciesDescription") is Action.REMOVE  # not listed: not copied


def test_what_a_report_copies_of_a_ct_image_is_in_the_table():
    """highdicom copies the root attributes of the source's Patient and Study modules: each
    one that can identify must have the profile's action here."""
    from highdicom._standard_utils import (
        get_iod_module_map,
        get_module_attribute_map,
        get_sop_class_iod_map,
    )

    iod = get_sop_class_iod_map()["1.2.840.10008.5.1.4.1.1.2"]
    modules = [m["key"] for m in get_iod_module_map()[iod] if m["ie"] in ("Patient", "Study")]
    copied = {
        str(a["keyword"])
        for m in modules
        for a in get_module_attribute_map()[m]
        if len(a["path"]) == 0
    }
    for keyword in ("PatientName", "PatientAge", "StudyID", "StudyDescription", "PatientWeight"):
        assert keyword in copied and keyword in BASIC_PROFILE
    # the rest is removed by not being listed, except what the method itself records
    recorded = {"PatientIdentityRemoved", "DeidentificationMethod"}
    kept = {k for k in copied if action(k) is Action.KEEP} - recorded
    assert kept == {"StudyInstanceUID"}


def test_deidentified_keeps_uids_and_records_the_method():
    source = d.ct_dataset()
    for keyword, value in SOURCE.items():
        setattr(source, keyword, value)
    original = copy.deepcopy(source)
    clean = deidentified(source)
    assert source == original, "the source header is not changed"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        assert clean[keyword].value == source[keyword].value
    for keyword in TYPE_2:
        assert keyword in clean and not clean[keyword].value, keyword
    for keyword in ("PatientAge", "PatientWeight", "StudyDescription", "InstitutionName"):
        assert keyword not in clean
    assert not any(element.tag.is_private for element in clean)
    assert "ClinicalTrialSubjectID" not in clean and "ClinicalTrialSiteName" not in clean
    assert clean.PatientIdentityRemoved == "YES"
    codes = [
        (c.CodeValue, c.CodingSchemeDesignator) for c in clean.DeidentificationMethodCodeSequence
    ]
    assert codes == [("113100", "DCM"), ("113110", "DCM")]


# --- The route's SR ---------------------------------------------------------------------------


@pytest.mark.database
def test_the_series_report_holds_no_source_value_and_records_the_profile(client, app_config):
    import highdicom as hd

    files, ordered = source_series(3)
    job = submit(client, {f"s{i}.dcm": raw for i, raw in enumerate(files)})
    classify_all(app_config["DATABASE_URL"])
    rows = list(rows_of(client, job["id"]).values())
    series_uid = rows[0]["series_uid"]
    response = client.get(f"/v1/jobs/{job['id']}/series/{series_uid}/sr")
    assert response.status_code == 200, response.get_json()
    raw = response.get_data()
    for secret in SECRETS:
        assert secret.encode() not in raw, secret
    report = pydicom.dcmread(io.BytesIO(raw))
    assert report.StudyInstanceUID == rows[0]["study_uid"]
    assert report.PatientSex == "" and report.StudyID == "" and report.StudyDate == ""
    for keyword in ("PatientAge", "PatientWeight", "PatientSize", "StudyDescription"):
        assert keyword not in report
    assert report.PatientIdentityRemoved == "YES"
    assert {c.CodeValue for c in report.DeidentificationMethodCodeSequence} == {
        "113100",
        "113110",
    }
    assert "113108" not in raw.decode("latin-1")  # patient characteristics are not kept
    referenced = {
        item.ReferencedSOPInstanceUID
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == set(ordered)
    hd.sr.Comprehensive3DSR.from_dataset(report)
    assert iod_errors(raw) == []
