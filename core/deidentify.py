"""De-identification by PS3.15 Annex E's Basic Application Level Confidentiality Profile,
with the Retain UIDs Option, for the header a derived object (the series' SR) copies from
its source instances.

``deidentified(header)`` returns a new header holding only what a derived object needs
from its source: the SOP class, the character set, the study, series and instance UIDs
(kept: the report references the instances and belongs in their study), and each
attribute of the patient and study modules as the profile's action says. Attributes the
profile does not list and private ones are not carried over, nor are the Clinical Trial
Subject and Study modules (a derived object needs none of them, and the profile would
leave some of them dummy values). The patient's
characteristics (sex, age, size, weight) are not retained, so the Retain Patient
Characteristics Option is not claimed.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


class Action(StrEnum):
    """What happens to an attribute (PS3.15 Table E.1-1's action codes)."""

    ZERO = "Z"  # kept, with a zero-length value
    REMOVE = "X"
    DUMMY = "D"  # a non-zero-length dummy value of its VR
    KEEP = "K"


PROFILE = ("113100", "DCM", "Basic Application Confidentiality Profile")
RETAIN_UIDS = ("113110", "DCM", "Retain UIDs Option")
METHOD_CODES = (PROFILE, RETAIN_UIDS)
METHOD = ("PS3.15 E Basic Application Confidentiality Profile", "Retain UIDs Option")
DUMMY = "DEIDENTIFIED"

# Table E.1-1's Basic Profile column for every attribute a derived object can copy from its
# source's patient, study and equipment modules; "U" (a new UID) is "K" under the Retain
# UIDs Option. Where the profile offers a choice (X/Z, Z/D, X/Z/D) the first it allows for
# the derived object is taken: X, unless the attribute is Type 2 there (then Z).
BASIC_PROFILE: Mapping[str, str] = MappingProxyType(
    {
        # Patient
        "PatientName": "Z",
        "PatientID": "Z/D",
        "IssuerOfPatientID": "X",
        "PatientBirthDate": "Z",
        "PatientBirthTime": "X",
        "PatientSex": "Z",
        "PatientSexNeutered": "X/Z",
        "OtherPatientIDs": "X",
        "OtherPatientIDsSequence": "X",
        "OtherPatientNames": "X",
        "PatientBirthName": "X",
        "PatientMotherBirthName": "X",
        "PatientAddress": "X",
        "PatientTelephoneNumbers": "X",
        "PatientTelecomInformation": "X",
        "EthnicGroup": "X",
        "PatientReligiousPreference": "X",
        "PatientComments": "X",
        "ReferencedPatientSequence": "X",
        "ReferencedPatientPhotoSequence": "X",
        "ResponsiblePerson": "X",
        "ResponsibleOrganization": "X",
        "MedicalRecordLocator": "X",
        "MilitaryRank": "X",
        "BranchOfService": "X",
        "CountryOfResidence": "X",
        "RegionOfResidence": "X",
        # Patient Study
        "PatientAge": "X",
        "PatientSize": "X",
        "PatientWeight": "X",
        "AdditionalPatientHistory": "X",
        "AdmittingDiagnosesDescription": "X",
        "AdmittingDiagnosesCodeSequence": "X",
        "Allergies": "X",
        "MedicalAlerts": "X",
        "Occupation": "X",
        "SmokingStatus": "X",
        "PregnancyStatus": "X",
        "LastMenstrualDate": "X",
        "ReasonForVisit": "X",
        "ReasonForVisitCodeSequence": "X",
        "AdmissionID": "X",
        "IssuerOfAdmissionIDSequence": "X",
        "ServiceEpisodeID": "X",
        "ServiceEpisodeDescription": "X",
        "IssuerOfServiceEpisodeIDSequence": "X",
        "PatientState": "X",
        # General Study
        "StudyInstanceUID": "U",
        "StudyDate": "Z",
        "StudyTime": "Z",
        "AccessionNumber": "Z",
        "StudyID": "Z",
        "StudyDescription": "X",
        "ReferringPhysicianName": "Z",
        "ReferringPhysicianIdentificationSequence": "X",
        "ConsultingPhysicianName": "Z",
        "ConsultingPhysicianIdentificationSequence": "X",
        "PhysiciansOfRecord": "X",
        "PhysiciansOfRecordIdentificationSequence": "X",
        "NameOfPhysiciansReadingStudy": "X",
        "PhysiciansReadingStudyIdentificationSequence": "X",
        "ReferencedStudySequence": "X/Z",
        "RequestingService": "X",
        # General Series and SOP Common: the instance a report references
        "SeriesInstanceUID": "U",
        "SOPInstanceUID": "U",
        # General Equipment: what would name the source's site and device
        "InstitutionName": "X/Z/D",
        "InstitutionAddress": "X",
        "InstitutionalDepartmentName": "X",
        "StationName": "X/Z/D",
        "DeviceSerialNumber": "X/Z/D",
        "AcquisitionDateTime": "X/Z/D",
        "AcquisitionDate": "X/Z",
        "AcquisitionTime": "X/Z",
    }
)

# Type 2 in a derived object's Patient and General Study modules: present, maybe empty.
TYPE_2 = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    }
)
# Not listed by the profile, and needed to make and read a derived object.
UNLISTED_KEPT = ("SOPClassUID", "SpecificCharacterSet")


def action(keyword: str) -> Action:
    """What the profile does with ``keyword`` in a derived object; an attribute it does not
    list is not carried over (X)."""
    choices = BASIC_PROFILE.get(keyword)
    if choices is None:
        return Action.KEEP if keyword in UNLISTED_KEPT else Action.REMOVE
    if choices == "U":
        return Action.KEEP  # the Retain UIDs Option
    options = choices.split("/")
    if "X" in options and keyword not in TYPE_2:
        return Action.REMOVE
    if "Z" in options:
        return Action.ZERO
    return Action(options[0])


def deidentified(header: Dataset) -> Dataset:
    """A new header with what a derived object copies from ``header``, de-identified:
    the profile's action applied to each attribute, the Type 2 ones present (empty when
    the source lacks them) and the method recorded (Patient Identity Removed YES, the
    profile and its option in De-identification Method and its code sequence)."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

    clean = Dataset()
    for element in header:
        if element.tag.is_private:
            continue
        todo = action(element.keyword)
        if todo is Action.KEEP:
            clean.add(element)
        elif todo is Action.ZERO:
            clean.add(DataElement(element.tag, element.VR, None))
        elif todo is Action.DUMMY:
            clean.add(DataElement(element.tag, element.VR, DUMMY))
    for keyword in sorted(TYPE_2):
        if keyword not in clean:
            setattr(clean, keyword, "")
    record_method(clean)
    return clean


def record_method(dataset: Dataset) -> None:
    """Mark ``dataset`` as de-identified by this profile (its Patient module attributes)."""
    from pydicom.dataset import Dataset

    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = list(METHOD)
    items = []
    for value, scheme, meaning in METHOD_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
        items.append(item)
    dataset.DeidentificationMethodCodeSequence = items
