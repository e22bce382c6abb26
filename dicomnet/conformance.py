"""The DICOM Conformance Statement, made from the code that it describes.

``covidscan conformance`` prints it; ``make conformance`` writes docs/conformance.md, and
tests/test_conformance.py fails when the committed copy differs from what this makes. The
presentation contexts come from the listener's own list (:func:`dicomnet.listener.
supported_contexts`), the association limits from the AE it builds, the transfer syntaxes
from :mod:`covidscan.dicom_syntaxes` and the de-identification from :mod:`core.deidentify`.
"""

from __future__ import annotations

from collections.abc import Iterable

from core.deidentify import BASIC_PROFILE, METHOD_CODES, Action, action
from core.reports.secondary_capture import OVERLAY_SERIES_NUMBER
from core.reports.sr import RESEARCH_ONLY, RESULTS_SERIES_NUMBER
from covidscan import __version__
from db.commitment import FAILURE_REASONS
from dicomnet import listener
from dicomnet.completeness import STUDY_ROOT_FIND
from dicomnet.pacs_source import CT_STORAGE, STUDY_ROOT_GET
from dicomnet.probe import CALLING_AE_TITLE, STORAGE_COMMITMENT_PUSH, VERIFICATION

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
STOW_RS_PATH = "/v1/dicomweb/studies"
SR_PATH = "/v1/jobs/{id}/series/{series_uid}/sr"


def _name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name


def _table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _storage_contexts() -> list[tuple[str, tuple[str, ...]]]:
    return [
        c
        for c in listener.supported_contexts()
        if c[0] not in (VERIFICATION, STORAGE_COMMITMENT_PUSH)
    ]


def statement() -> str:
    """The conformance statement as Markdown."""
    ae = listener.application_entity(listener.DEFAULT_AE_TITLE)
    storage = _storage_contexts()
    syntaxes = storage[0][1]
    verification = next(c for c in listener.supported_contexts() if c[0] == VERIFICATION)
    ct = [uid for uid, _ in storage if _name(uid).endswith("CT Image Storage")]
    lines = [
        "# DICOM Conformance Statement: covidscan",
        "",
        "Generated from the code by `covidscan conformance` (`make conformance`); "
        "tests/test_conformance.py fails when this copy differs. Research use only, "
        "not for diagnosis.",
        "",
        "## 1. Implementation",
        "",
        f"- Product: covidscan {__version__} (bulk COVID-19 classification of chest CT).",
        f"- Implementation Class UID at association: `{ae.implementation_class_uid}`, "
        f"version name `{ae.implementation_version_name}` (pynetdicom's, the network layer); "
        "the file meta of the SR and of the overlay names highdicom, which writes them.",
        "- Application entities: the C-STORE listener (`covidscan dicom-listen`), the "
        "destination probe (`covidscan destinations test`), and the HTTP API "
        "(DICOMweb STOW-RS in, the series' SR out).",
        "",
        "## 2. Application entity: the listener (`covidscan dicom-listen`)",
        "",
        f"- AE title: `{listener.DEFAULT_AE_TITLE}` by default (`--ae-title`, 1 to 16 "
        f"characters); port {listener.DEFAULT_PORT} (`--port`), address "
        f"{listener.DEFAULT_HOST} (`--host`).",
        f"- Called AE title: {'checked' if ae.require_called_aet else 'not checked'}. "
        "Calling AE titles: any, unless "
        "`DICOM_ALLOWED_AE_TITLES` lists them; an association from any other is rejected "
        "(rejected permanent, calling AE title not recognised).",
        f"- Association limits: at most {ae.maximum_associations} associations at once "
        "(`DICOM_MAX_ASSOCIATIONS`; one more is rejected: rejected transient, local limit "
        f"exceeded); ACSE, DIMSE and network timeouts {ae.acse_timeout:g} s "
        f"(`DICOM_TIMEOUT`); maximum PDU received {ae.maximum_pdu_size} bytes.",
        "- Each association becomes one job owned by `--owner`; the job is submitted with "
        "the first instance stored and stays open until its series are complete: when the "
        "calling AE title is a registered DICOM destination's, the listener asks it after "
        "the release (C-FIND, Study Root, SERIES level, `NumberOfSeriesRelatedInstances`) "
        "and seals the job when every series arrived whole; otherwise, or after an abort, "
        "the job is sealed `SERIES_STABLE_SECONDS` after the last instance. A second "
        "association carrying more of the same series makes a job of its own.",
        "- Association initiation: that C-FIND, as the listener's AE title, to the "
        "sender registered as a destination; and to retrieve studies asked for with "
        "`POST /v1/retrievals` (below).",
        "- Results go to the destinations named by `--export-to`, and with "
        "`--return-to-sender` to the destination registered with the calling AE title.",
        "",
        "### SOP classes",
        "",
        *_table(
            ("SOP class", "UID", "Role"),
            [
                (_name(VERIFICATION), f"`{VERIFICATION}`", "SCP (listener), SCU (probe)"),
                ("Every storage SOP class of pynetdicom (below)", "", "SCP"),
                (
                    _name(STORAGE_COMMITMENT_PUSH),
                    f"`{STORAGE_COMMITMENT_PUSH}`",
                    "SCU: N-ACTION on the association that stored the results; the "
                    "N-EVENT-REPORT is accepted by the listener on an association the PACS "
                    "opens, proposing itself as SCP (SCP/SCU role selection accepted: "
                    "requestor SCP)",
                ),
                (_name(STUDY_ROOT_FIND), f"`{STUDY_ROOT_FIND}`", "SCU (series sizes)"),
            ],
        ),
        "",
        f"The listener accepts {len(storage)} storage SOP classes: pynetdicom's "
        "AllStoragePresentationContexts, each in every transfer syntax below. The CT image "
        "classes are the ones classified:",
        "",
        *(f"- {_name(uid)} `{uid}`" for uid in ct),
        "",
        "An instance of another modality is refused with 0x0122 unless the listener was "
        "started with `--allow-modality` naming it; so are objects without pixel data "
        "(structured reports, presentation states), colour images and DICOMDIR files. The "
        "modality is read from the instance's header, not from its SOP class.",
        "",
        "### Transfer syntaxes",
        "",
        "Every storage SOP class, in this order of preference (the ones the pipeline decodes):",
        "",
        *_table(("Transfer syntax", "UID"), [(_name(s), f"`{s}`") for s in syntaxes]),
        "",
        "Verification: " + ", ".join(_name(s) for s in verification[1]) + ".",
        "",
        "### Storage Commitment reports received",
        "",
        "The N-EVENT-REPORT (Event Type 1: all committed; 2: failures exist) is answered "
        "0x0000 once recorded: each instance of the Referenced SOP Sequence moves its "
        "delivery of that Transaction UID from `stored` to `committed`, each of the Failed "
        "SOP Sequence to `failed` with its Failure Reason in words ("
        + ", ".join(f"0x{code:04X} {words}" for code, words in FAILURE_REASONS.items())
        + "). A report that cannot be read or recorded is answered 0x0110. The PACS must "
        "know the listener: its AE title, host and port registered as a modality (Orthanc: "
        "`DicomModalities`), as the report goes to the AE title that asked.",
        "",
        "### C-STORE status codes returned",
        "",
        *_table(
            ("Status", "Meaning", "When"),
            [
                (
                    f"0x{listener.SUCCESS:04X}",
                    "Success",
                    "the instance passed the header checks, is stored and its scans are "
                    "written to the job",
                ),
                (
                    f"0x{listener.OUT_OF_RESOURCES:04X}",
                    "Refused: out of resources",
                    "over a limit (`MAX_SCAN_BYTES`, `MAX_SCAN_PIXELS`, `MAX_SCANS_PER_JOB`, "
                    "`MAX_ACTIVE_JOBS`), over the owner's `SCANS_PER_HOUR`, or a service "
                    "(database, Redis) unavailable",
                ),
                (
                    f"0x{listener.NOT_SUPPORTED:04X}",
                    "Refused: SOP class not supported",
                    "another modality, an object without pixel data, a colour image, a DICOMDIR",
                ),
                (
                    f"0x{listener.CANNOT_UNDERSTAND:04X}",
                    "Error: cannot understand",
                    "an instance whose header cannot be read or is malformed",
                ),
            ],
        ),
        "",
        "### Retrieving from a PACS (SCU)",
        "",
        "The same process, with the same AE title as calling AE, retrieves the studies asked "
        "for with `POST /v1/retrievals` (`covidscan pull`) from a registered DICOM "
        "destination, inside `RETRIEVE_WINDOW`. The PACS must accept that calling AE for "
        "C-FIND and C-GET; it needs no address for it (C-GET answers over the same "
        "association).",
        "",
        *_table(
            ("SOP class", "UID", "Role"),
            [
                (_name(STUDY_ROOT_FIND), f"`{STUDY_ROOT_FIND}`", "SCU"),
                (_name(STUDY_ROOT_GET), f"`{STUDY_ROOT_GET}`", "SCU"),
                *((_name(uid), f"`{uid}`", "SCP (C-GET sub-operations)") for uid in CT_STORAGE),
            ],
        ),
        "",
        "- C-FIND at STUDY level by AccessionNumber (never a wildcard) or StudyInstanceUID, "
        "then at SERIES level with Modality `CT`, asking NumberOfSeriesRelatedInstances.",
        "- C-GET at SERIES level for each CT series found; the storage sub-operations are "
        "proposed with SCP/SCU Role Selection, one presentation context per transfer syntax "
        "above, and answered with the listener's C-STORE status codes (above).",
        "",
        "## 3. Application entity: the destination probe (`covidscan destinations test`)",
        "",
        f"- Calling AE title `{CALLING_AE_TITLE}` (`--calling-ae-title`); requests "
        f"{_name(VERIFICATION)} (SCU, sends one C-ECHO) and proposes "
        f"{_name(STORAGE_COMMITMENT_PUSH)} `{STORAGE_COMMITMENT_PUSH}` only to report "
        "whether the PACS accepts it; no N-ACTION is sent.",
        "- Over TLS when the destination is registered with `--tls` (the system's "
        "certificate authorities, the host name checked).",
        "",
        "## 4. Objects created: the series' Structured Report and Grad-CAM overlay",
        "",
        f"- {_name(COMPREHENSIVE_3D_SR)} `{COMPREHENSIVE_3D_SR}`, TID 1500 Measurement "
        "Report written by highdicom: one measurement group referencing every classified "
        "instance (and frame) of the series, the finding *COVID-19: Yes/No* (SNOMED CT), "
        "P(COVID) as a measurement, the algorithm named; Content Qualification `RESEARCH`; "
        f"Series Number {RESULTS_SERIES_NUMBER} unless an export names its own.",
        f"- Served over HTTP: `GET {SR_PATH}` (`application/dicom`, Explicit VR Little "
        "Endian); sent to the destinations a job names (`export_to`) by C-STORE or STOW-RS "
        "with the original patient and study modules put back (section 7).",
        f"- {_name(SECONDARY_CAPTURE)} `{SECONDARY_CAPTURE}`, made for an export that asks "
        "for the series' Grad-CAM overlay: the slice with the highest P(COVID) among those "
        "with a Grad-CAM explanation (explanations are made on request; with none, no "
        "overlay is made and the export says why), blended with its heatmap and a legend, "
        "as the API's heatmap picture. RGB, 8 bits, Explicit VR Little Endian; Modality "
        f"`OT`, a series of its own in the study of the slice (Series Number "
        f"{OVERLAY_SERIES_NUMBER} unless the export names its own); Image Type "
        "`DERIVED\\SECONDARY\\OTHER`, Conversion Type `DI`; the slice (and frame) in "
        "Source Image Sequence (purpose: source image for image processing operation); "
        "Derivation Description, Burned In Annotation `YES` (the legend, and a warning when "
        f'the model is untrained); Image Comments and Series Description "{RESEARCH_ONLY}"; '
        "Patient Orientation from the slice's Image Orientation (Patient) when its header "
        "has one (else empty).",
        "- The export that sends them names both objects' SOP Instance UIDs, the same on "
        "every attempt, so a PACS receives the same instance again rather than a copy.",
        "",
        "### De-identification",
        "",
        "The report and the overlay are de-identified by PS3.15 Annex E's Basic Application Level "
        "Confidentiality Profile with the Retain UIDs Option: Patient Identity Removed "
        "`YES`; De-identification Method Code Sequence "
        + ", ".join(f'({s}, {v}, "{m}")' for v, s, m in METHOD_CODES)
        + ". Patient characteristics are not retained. The study, series and instance "
        "UIDs are kept, so the objects belong in the study of their images. Of the source's "
        "patient, study and equipment modules:",
        "",
        *_table(
            ("Action", "Attributes"),
            [
                (label, ", ".join(sorted(k for k in BASIC_PROFILE if action(k) is todo)))
                for todo, label in (
                    (Action.KEEP, "K (kept)"),
                    (Action.ZERO, "Z (present, empty)"),
                    (Action.REMOVE, "X (not copied)"),
                )
            ],
        ),
        "",
        "Private attributes, attributes the profile does not list and the Clinical Trial "
        "modules are not copied either.",
        "",
        "## 5. DICOMweb",
        "",
        f"- STOW-RS origin server: `POST {STOW_RS_PATH}` (`multipart/related; "
        'type="application/dicom"`), the same checks, limits and modalities as the '
        "listener; each failed instance is in `FailedSOPSequence` with FailureReason "
        f"0x{listener.NOT_SUPPORTED:04X} or 0x{listener.CANNOT_UNDERSTAND:04X}; HTTP 200 "
        "all stored, 202 some, 409 none; a limit refuses the whole request (413).",
        "- QIDO-RS client: `covidscan destinations test` queries "
        "`{url}/studies?limit=1` of a DICOMweb destination.",
        "- QIDO-RS and WADO-RS client: a retrieval from a DICOMweb destination "
        "(`POST /v1/retrievals`) queries `{url}/studies?AccessionNumber=` (or "
        "`StudyInstanceUID=`) and `{url}/studies/{study}/series?Modality=CT`, then retrieves "
        "each CT series from `{url}/studies/{study}/series/{series}` (`multipart/related; "
        'type="application/dicom"`, Explicit VR Little Endian).',
        "",
        "## 6. Security",
        "",
        "- The listener has no TLS and authenticates no one beyond the calling AE title: "
        "run it on a private network only, with `DICOM_ALLOWED_AE_TITLES` set.",
        "- DICOM destinations may be reached over TLS (`--tls`); DICOMweb destinations "
        "over HTTPS, with a bearer token or basic auth sealed with `PHI_KEY`.",
        "- The HTTP API needs an API key; the SR and the overlay are de-identified (section 4).",
        "",
        "## 7. Application entity: the exporter (in `covidscan dicom-listen`)",
        "",
        "- Sends each complete, classified series' SR (and, for a job that asked for "
        "Grad-CAM explanations, its overlay once they are made) to the destinations its "
        "job names, as the listener's AE title (`--ae-title`), one association per instance; the "
        "SOP Instance UID is fixed when the export is made and the same on every attempt. "
        "The original patient and study attributes (sealed at intake with `PHI_KEY`) "
        "replace the de-identified ones; Patient Identity Removed and the de-identification "
        "method are left out. Without them, the export fails: the PACS could not file it.",
        "- Timeouts: `EXPORT_TIMEOUT` for the connection, ACSE, DIMSE and network.",
        "",
        *_table(
            ("SOP class", "UID", "Role"),
            [
                (_name(COMPREHENSIVE_3D_SR), f"`{COMPREHENSIVE_3D_SR}`", "SCU (C-STORE)"),
                (_name(SECONDARY_CAPTURE), f"`{SECONDARY_CAPTURE}`", "SCU (C-STORE)"),
                (
                    _name(STORAGE_COMMITMENT_PUSH),
                    f"`{STORAGE_COMMITMENT_PUSH}`",
                    "SCU (N-ACTION on the C-STORE's association, destinations registered "
                    "with commitment)",
                ),
            ],
        ),
        "",
        "Transfer syntax proposed: Explicit VR Little Endian (the objects as written).",
        "",
        "### C-STORE status codes received",
        "",
        *_table(
            ("Status", "What the export does"),
            [
                ("0x0000, warnings (0x0001, 0xB000, 0xB006, 0xB007, …)", "`stored`"),
                (
                    "0xA7xx out of resources, 0x0110 processing failure; an abort, a "
                    "timeout, a refused connection, a transient association rejection",
                    "tried again with exponential backoff from `EXPORT_RETRY_BASE_MS` "
                    "until `EXPORT_RETRY_WINDOW`, then `failed` with the last reason",
                ),
                (
                    "0x0122, 0x0124, 0xA9xx, 0xCxxx and other failures; a permanent "
                    "association rejection; the SOP class not accepted",
                    "`failed` at once, with the status and its meaning",
                ),
            ],
        ),
        "",
        "STOW-RS (`POST {url}/studies`): HTTP 200 `stored`; 202 with a Failed SOP Sequence, "
        "409 and other 4xx `failed` with the FailureReason; 408, 429 and 5xx tried again "
        "(honouring Retry-After).",
        "",
    ]
    return "\n".join(lines)
