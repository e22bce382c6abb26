"""A registered DICOMweb service used as a source: QIDO-RS to find, WADO-RS to retrieve.

``{url}/studies?AccessionNumber=`` (or ``StudyInstanceUID=``) finds the studies,
``{url}/studies/{study}/series?Modality=CT`` their CT series with their numbers of
instances, and ``{url}/studies/{study}/series/{series}`` (``multipart/related``, read by
dicomweb-client) their instances. The query URLs hold accession numbers: the HTTP
libraries' debug logs, which print URLs, are kept at INFO in this process.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Optional

import requests

from core.destinations import Credentials
from dicomnet.pacs_source import Found, Sink, SourceRefused, SourceUnreachable

log = logging.getLogger(__name__)

STUDY_UID, SERIES_UID, MODALITY, SERIES_INSTANCES = "0020000D", "0020000E", "00080060", "00201209"
URL_LOGGERS = ("urllib3.connectionpool", "dicomweb_client", "dicomweb_client.web")


def _value(attributes: dict[str, Any], tag: str) -> Optional[Any]:
    values = (attributes.get(tag) or {}).get("Value") or []
    return values[0] if values else None


class DicomWebSource:
    """A DICOMweb base URL, with the destination's credentials if it has some."""

    def __init__(
        self, url: str, credentials: Optional[Credentials] = None, timeout: float = 30.0
    ) -> None:
        from dicomweb_client.api import DICOMwebClient

        for name in URL_LOGGERS:  # their DEBUG lines print query URLs (accession numbers)
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() < logging.INFO:
                logger.setLevel(logging.INFO)
        self.url = url.rstrip("/")
        session = requests.Session()
        if credentials is not None and credentials.token:
            session.headers["Authorization"] = f"Bearer {credentials.token}"
        elif credentials is not None and credentials.basic:
            session.auth = credentials.basic
        self.client = DICOMwebClient(self.url, session=session, timeout=timeout)
        self.client.set_http_retry_params(retry=False)

    def _call(self, what: str, call: Any) -> Any:
        """``call()``, its HTTP failures as SourceRefused (an answer) or SourceUnreachable."""
        try:
            return call()
        except requests.HTTPError as exc:
            response = exc.response
            status = response.status_code if response is not None else "?"
            reason = response.reason if response is not None else ""
            raise SourceRefused(
                f"{self.url} answered the {what} with HTTP {status} {reason}".rstrip()
            ) from None
        except requests.RequestException as exc:  # its text may hold the query URL: not shown
            raise SourceUnreachable(f"cannot reach {self.url}: {type(exc).__name__}") from None

    def find(self, by_accession: bool, identifier: str) -> Found:
        """The studies ``identifier`` names and their CT series (QIDO-RS)."""
        key = "AccessionNumber" if by_accession else "StudyInstanceUID"
        studies = self._call(
            "QIDO-RS query",
            lambda: self.client.search_for_studies(search_filters={key: identifier}),
        )
        found = Found()
        for study in studies or []:
            uid = _value(study, STUDY_UID)
            if uid and uid not in found.study_uids:
                found.study_uids.append(str(uid))
        for study_uid in found.study_uids:
            series = self._call(
                "QIDO-RS query",
                lambda study_uid=study_uid: self.client.search_for_series(
                    study_instance_uid=study_uid,
                    search_filters={"Modality": "CT"},
                    fields=["NumberOfSeriesRelatedInstances"],
                ),
            )
            for entry in series or []:
                if str(_value(entry, MODALITY) or "CT").upper() != "CT":
                    continue
                series_uid = _value(entry, SERIES_UID)
                count = _value(entry, SERIES_INSTANCES)
                if series_uid:
                    found.series.append(
                        (study_uid, str(series_uid), int(count) if count is not None else None)
                    )
        return found

    def get(self, found: Found, sink: Sink) -> Optional[str]:
        """WADO-RS every series of ``found``; each instance goes to ``sink.take``."""
        for study_uid, series_uid, _count in found.series:

            def instances(study_uid: str = study_uid, series_uid: str = series_uid) -> None:
                for dataset in self.client.iter_series(study_uid, series_uid):
                    buffer = io.BytesIO()
                    dataset.save_as(buffer, enforce_file_format=True)
                    sink.take(buffer.getvalue())

            self._call("WADO-RS retrieval", instances)
        return None
