"""The patient and study attributes a PACS needs to file a result, kept sealed beside a job's files.

A result sent to a PACS must carry the original patient module (name, ID, birth date, sex,
...) and study fields (accession number, study ID, date, ...), or the PACS files it under
nobody. None of them goes to SQL, the logs, the metrics or an answer: when a DICOM header is
read at intake, :data:`PATIENT_KEYWORDS` are taken out of it as DICOM JSON and sealed with
``PHI_KEY`` (purpose :data:`core.sealing.PATIENT_ATTRIBUTES`) before they leave the read;
:func:`keep_patient` stores them once per study under the job's prefix
(:meth:`db.blobs.BlobStore.patient_key`), so they go with the job's files (deleted by
``DELETE /v1/jobs/<id>``, retention and the orphan sweep); :func:`open_patient` puts them
back for an instance sent to a destination. Without ``PHI_KEY`` nothing is kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from core.sealing import PATIENT_ATTRIBUTES, Sealer, SealError
from db.blobs import BlobNotFound, BlobStore, is_uid

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "PATIENT_KEYWORDS",
    "PatientKeeper",
    "SealedPatient",
    "keep_patient",
    "open_patient",
    "patient_sealer",
    "seal_patient",
]

log = logging.getLogger(__name__)

PATIENT_KEYWORDS = (
    # SOP Common: how the text values below are encoded
    "SpecificCharacterSet",
    "TimezoneOffsetFromUTC",
    # Patient
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientBreedDescription",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    # General Study
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "RequestingService",
    "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    # Patient Study
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "Occupation",
    "AdditionalPatientHistory",
    "MedicalAlerts",
    "Allergies",
    "PregnancyStatus",
    "SmokingStatus",
    # Where the study was made
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    # Clinical Trial Subject
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialSiteID",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
)
"""What is kept of each study: the Patient, General Study and Patient Study modules, the
character set their text is in, the institution, and a clinical trial's subject."""

_NO_KEY = "no key"
_warned: set[str] = set()


def _warn_once(what: str, message: str) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning(message)


def patient_sealer(phi_key: Optional[str]) -> Optional[Sealer]:
    """The sealer of patient attributes for ``Settings.phi_key``; None without a key (the
    first time, a warning says what that costs)."""
    if not phi_key:
        _warn_once(
            _NO_KEY,
            "PHI_KEY is not set: the patient and study attributes of DICOM uploads are not "
            "kept, so results exported to a PACS cannot be filed under their patient and study",
        )
        return None
    return Sealer.from_setting(phi_key, "keeping patient attributes")


@dataclass(frozen=True)
class SealedPatient:
    """One instance's patient and study attributes, sealed; what is known in plain text is
    its study's UID only."""

    study_uid: str
    sealed: bytes = field(repr=False)
    # SHA-256 of what was sealed, in memory only: tells another instance's attributes apart
    digest: bytes = field(repr=False)
    sealer: Sealer = field(repr=False, compare=False)

    def same_as(self, sealed: bytes) -> bool:
        """Whether ``sealed`` (stored earlier) holds the same attributes.

        Raises:
            SealError: ``sealed`` cannot be opened with this key.
        """
        return hashlib.sha256(self.sealer.open(PATIENT_ATTRIBUTES, sealed)).digest() == self.digest


def seal_patient(
    dataset: Dataset, study_uid: Optional[str], sealer: Sealer, shown_as: str
) -> Optional[SealedPatient]:
    """The :data:`PATIENT_KEYWORDS` of ``dataset`` as DICOM JSON, sealed; None when its
    study UID is not a UID (the attributes could not be found again). An attribute whose
    value cannot be read is left out, with a warning naming it (never its value)."""
    if not study_uid or not is_uid(study_uid):
        log.warning(
            "%s: its Study Instance UID is missing or not a UID; its patient and study "
            "attributes are not kept",
            shown_as,
        )
        return None
    kept: dict[str, Any] = {}
    unreadable: list[str] = []
    for keyword in PATIENT_KEYWORDS:
        if keyword not in dataset:
            continue
        try:
            element = dataset[keyword]
            kept[f"{element.tag:08X}"] = element.to_json_dict(None, 1024)
        # pydicom's messages quote the value: only the attribute's name is told
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            unreadable.append(keyword)
    if unreadable:
        log.warning(
            "%s: unreadable %s left out of the patient attributes kept",
            shown_as,
            ", ".join(unreadable),
        )
    plain = json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()
    return SealedPatient(
        study_uid,
        sealer.seal(PATIENT_ATTRIBUTES, plain),
        hashlib.sha256(plain).digest(),
        sealer,
    )


def _differs(job_id: str, study_uid: str) -> None:
    log.warning(
        "job %s: an instance of study %s has other patient or study attributes than the "
        "first one received; the first are kept",
        job_id,
        study_uid,
    )


def keep_patient(blobs: BlobStore, job_id: str, patient: SealedPatient) -> bool:
    """Store the sealed attributes of ``patient``'s study in the job, unless the job has
    them already: the first instance of a study wins (a later one with other values is
    logged, without them). True when they were stored now."""
    key = blobs.patient_key(job_id, patient.study_uid)
    try:
        stored = blobs.get(key)
    except BlobNotFound:
        blobs.put(key, patient.sealed)
        return True
    try:
        if not patient.same_as(stored):
            _differs(job_id, patient.study_uid)
        return False
    except SealError:  # sealed under a former PHI_KEY: no one could open them now
        log.warning(
            "job %s: the patient attributes of study %s were sealed under another PHI_KEY; "
            "replaced with those of this instance",
            job_id,
            patient.study_uid,
        )
        blobs.put(key, patient.sealed)
        return True


@dataclass
class PatientKeeper:
    """Keeps the patient attributes of the studies one request stores in a job: each study's
    are read from the store (or stored) once per request, its other instances compared in
    memory; ``stored`` lists the keys this request wrote."""

    blobs: BlobStore
    stored: list[str] = field(default_factory=list)
    _digests: dict[str, bytes] = field(default_factory=dict, repr=False)
    _warned: set[str] = field(default_factory=set)

    def keep(self, job_id: str, patient: SealedPatient) -> None:
        study = patient.study_uid
        seen = self._digests.get(study)
        if seen is None:
            self._digests[study] = patient.digest
            if keep_patient(self.blobs, job_id, patient):
                self.stored.append(self.blobs.patient_key(job_id, study))
        elif seen != patient.digest and study not in self._warned:
            self._warned.add(study)  # once per study and request, however many instances
            _differs(job_id, study)


def open_patient(
    blobs: BlobStore, job_id: str, study_uid: str, phi_key: Optional[str]
) -> Optional[Dataset]:
    """The patient and study attributes kept for ``study_uid`` in the job, as a dataset to
    put into an instance sent to a destination; None when none were kept (no ``PHI_KEY``
    at intake, or a study UID that is not a UID).

    Raises:
        MissingKey: ``phi_key`` is not set.
        SealError: they were altered, or sealed under another ``PHI_KEY``.
    """
    from pydicom.dataset import Dataset

    sealer = Sealer.from_setting(phi_key, "filing a result under its patient")
    if not is_uid(study_uid):
        return None
    try:
        sealed = blobs.get(blobs.patient_key(job_id, study_uid))
    except BlobNotFound:
        return None
    return Dataset.from_json(json.loads(sealer.open(PATIENT_ATTRIBUTES, sealed)))
