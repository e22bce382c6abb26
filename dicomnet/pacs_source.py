"""A registered PACS used as a source: find a study (C-FIND) and get its CT series (C-GET).

C-FIND asks the Study Root model at STUDY level by AccessionNumber or StudyInstanceUID,
then at SERIES level for the CT series of each study found, with their numbers of
instances. C-GET asks for each series; its instances come back as C-STORE sub-operations
over the same association, so the PACS need not know where covidscan listens.

Identifiers never reach a log: pynetdicom's own logging of query identifiers is turned off
while a source is used, and errors name statuses, never what was asked for.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from covidscan.dicom_syntaxes import DECODED_TRANSFER_SYNTAXES
from dicomnet.completeness import STUDY_ROOT_FIND
from dicomnet.probe import _connect_failure

log = logging.getLogger(__name__)

STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
)
PENDING = (0xFF00, 0xFF01)
WARNING_STATUSES = (0x0001, 0xB000, 0xB006, 0xB007)


class Sink(Protocol):
    """Where retrieved instances go (:class:`dicomnet.retriever.Collected`)."""

    def on_store(self, event: Any) -> int:
        """A C-STORE sub-operation of a C-GET; its status."""

    def take(self, data: bytes) -> int:
        """One instance as Part 10 bytes; the C-STORE status it would earn."""


class SourceRefused(Exception):
    """The PACS answered, and refused: an association rejected, or a failure status."""


class SourceUnreachable(Exception):
    """The PACS could not be reached, or stopped answering."""


@dataclass
class Found:
    """What C-FIND found for one identifier: its studies and their CT series, with the
    number of instances the PACS says each holds (None if it did not say)."""

    study_uids: list[str] = field(default_factory=list)
    series: list[tuple[str, str, Optional[int]]] = field(default_factory=list)

    @property
    def instances(self) -> int:
        return sum(count or 0 for _study, _series, count in self.series)


def _quiet_identifiers() -> None:
    """pynetdicom logs C-FIND and C-GET identifiers by default: an accession number is a
    patient's study's, so it must not reach the log."""
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def _status_text(status: Any) -> str:
    code = getattr(status, "Status", None)
    if code is None:
        return "no answer (association aborted or timed out)"
    comment = getattr(status, "ErrorComment", None)
    text = f"status 0x{int(code):04X}"
    return f"{text}: {comment}" if comment else text


@dataclass
class DicomSource:
    """A DICOM PACS at ``host:port`` called ``ae_title``; covidscan calls as ``calling``."""

    host: str
    port: int
    ae_title: str
    calling: str = "COVIDSCAN"
    tls: bool = False
    timeout: float = 30.0

    @property
    def called(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    def _ae(self, contexts: list[tuple[str, list[str]]]) -> Any:
        from pynetdicom import AE

        _quiet_identifiers()
        ae = AE(ae_title=self.calling)
        for abstract_syntax, syntaxes in contexts:
            ae.add_requested_context(abstract_syntax, syntaxes)
        ae.acse_timeout = ae.network_timeout = ae.connection_timeout = self.timeout
        ae.dimse_timeout = max(self.timeout, 60.0)
        return ae

    def _associate(self, ae: Any, **kwargs: Any) -> Any:
        """An established association, or SourceRefused / SourceUnreachable saying why."""
        context = ssl.create_default_context() if self.tls else None
        failure = _connect_failure(self.host, self.port, self.timeout, context)
        if failure:
            raise SourceUnreachable(failure)
        tls_args = (context, self.host) if context is not None else None
        try:
            assoc = ae.associate(
                self.host, self.port, ae_title=self.ae_title, tls_args=tls_args, **kwargs
            )
        except (OSError, ssl.SSLError) as exc:
            raise SourceUnreachable(
                f"cannot open an association with {self.called}: {exc}"
            ) from None
        if assoc.is_rejected:
            answer = assoc.acceptor.primitive
            reason = (
                f"{answer.reason_str} ({answer.result_str}, by the {answer.source_str})"
                if answer is not None
                else "no reason given"
            )
            raise SourceRefused(f"association rejected by {self.called}: {reason}")
        if not assoc.is_established:
            raise SourceUnreachable(f"association with {self.called} aborted")
        return assoc

    def _no_answer(self, assoc: Any, what: str, started: float) -> Exception:
        """No status to a request: the PACS aborted at once (as one does to a calling AE
        title it does not accept for that service), or gave no answer in time."""
        waited = time.monotonic() - started
        if waited < self.timeout:
            return SourceRefused(
                f"{self.called} aborted the association at the {what}: does it accept "
                f"{what} requests from the calling AE title {self.calling}?"
            )
        return SourceUnreachable(f"{self.called} gave no answer to the {what} in {waited:.0f} s")

    def find(self, by_accession: bool, identifier: str) -> Found:
        """The studies ``identifier`` names and their CT series.

        Raises:
            SourceRefused, SourceUnreachable.
        """
        from pydicom.dataset import Dataset

        ae = self._ae([(STUDY_ROOT_FIND, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])])
        assoc = self._associate(ae)
        try:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.AccessionNumber = identifier if by_accession else ""
            query.StudyInstanceUID = "" if by_accession else identifier
            found = Found()
            for identity in self._find(assoc, query):
                uid = str(identity.get("StudyInstanceUID", "") or "")
                if uid and uid not in found.study_uids:
                    found.study_uids.append(uid)
            for study_uid in found.study_uids:
                query = Dataset()
                query.QueryRetrieveLevel = "SERIES"
                query.StudyInstanceUID = study_uid
                query.SeriesInstanceUID = ""
                query.Modality = "CT"
                query.NumberOfSeriesRelatedInstances = ""
                for identity in self._find(assoc, query):
                    if str(identity.get("Modality", "CT") or "CT").upper() != "CT":
                        continue  # a PACS that ignores the Modality key
                    series_uid = str(identity.get("SeriesInstanceUID", "") or "")
                    count = identity.get("NumberOfSeriesRelatedInstances")
                    if series_uid:
                        found.series.append(
                            (study_uid, series_uid, int(count) if count not in (None, "") else None)
                        )
            return found
        finally:
            if assoc.is_established:
                assoc.release()

    def _find(self, assoc: Any, query: Any) -> list[Any]:
        answers = []
        started = time.monotonic()
        for status, identity in assoc.send_c_find(query, STUDY_ROOT_FIND):
            code = getattr(status, "Status", None)
            if code in PENDING:
                if identity is not None:
                    answers.append(identity)
                continue
            if code == 0x0000:
                return answers
            if code is None:
                raise self._no_answer(assoc, "C-FIND", started)
            raise SourceRefused(f"{self.called} answered the C-FIND with {_status_text(status)}")
        return answers

    def get(self, found: Found, sink: Sink) -> Optional[str]:
        """C-GET every series of ``found``; each instance goes to ``sink.on_store`` (a
        pynetdicom C-STORE handler, its return the sub-operation's status). Returns what the
        PACS said when a series was not sent whole (None when all went well).

        Raises:
            SourceRefused, SourceUnreachable.
        """
        from pydicom.dataset import Dataset
        from pynetdicom import build_role, evt

        contexts: list[tuple[str, list[str]]] = [(STUDY_ROOT_GET, ["1.2.840.10008.1.2.1"])]
        for storage in CT_STORAGE:
            contexts.extend((storage, [syntax]) for syntax in DECODED_TRANSFER_SYNTAXES)
        ae = self._ae(contexts)
        roles = [build_role(storage, scp_role=True) for storage in CT_STORAGE]
        assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, sink.on_store)])
        warnings: list[str] = []
        try:
            for study_uid, series_uid, _count in found.series:
                query = Dataset()
                query.QueryRetrieveLevel = "SERIES"
                query.StudyInstanceUID = study_uid
                query.SeriesInstanceUID = series_uid
                last, started = None, time.monotonic()
                for status, _identity in assoc.send_c_get(query, STUDY_ROOT_GET):
                    last = status
                code = getattr(last, "Status", None)
                if code is None:
                    raise self._no_answer(assoc, "C-GET", started)
                if code in WARNING_STATUSES:
                    warnings.append(f"C-GET answered with {_status_text(last)}")
                elif code != 0x0000:
                    raise SourceRefused(
                        f"{self.called} answered the C-GET with {_status_text(last)}"
                    )
            return "; ".join(warnings) or None
        finally:
            if assoc.is_established:
                assoc.release()
