"""How many instances a sender holds in each series it sent: a C-FIND at SERIES level.

A series received over C-STORE is complete when the instances received equal the
``NumberOfSeriesRelatedInstances`` its sender (a registered DICOM destination that answers
C-FIND) gives for it; without an answer the listener falls back to a timer
(``SERIES_STABLE_SECONDS``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import Any, Optional

log = logging.getLogger(__name__)

# pynetdicom.sop_class.StudyRootQueryRetrieveInformationModelFind's UID: that module makes
# its SOP classes at import time, so type checkers do not see them.
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PENDING = (0xFF00, 0xFF01)


def series_query(study_uid: Optional[str], series_uid: str) -> Any:
    """The C-FIND identifier asking one series' size (Study Root, SERIES level)."""
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid or ""
    query.SeriesInstanceUID = series_uid
    query.NumberOfSeriesRelatedInstances = None
    return query


def series_sizes(
    host: str,
    port: int,
    called_ae: str,
    series: Mapping[str, Optional[str]],
    *,
    calling_ae: str,
    timeout: float,
    tls: bool = False,
) -> dict[str, int]:
    """``NumberOfSeriesRelatedInstances`` of each series (Series Instance UID -> Study
    Instance UID) by C-FIND to ``called_ae@host:port``; a series it gave no count for is
    absent. Each step waits at most ``timeout`` seconds. Never raises for a network
    failure or a refusal: it is logged and the answer is what was learnt."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(STUDY_ROOT_FIND)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    peer = f"{called_ae}@{host}:{port}"
    tls_args = (ssl.create_default_context(), host) if tls else None
    try:
        assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls_args)
    except (OSError, ssl.SSLError) as exc:
        log.warning("C-FIND to %s for series sizes: no association: %s", peer, exc)
        return {}
    if not assoc.is_established:
        log.warning(
            "C-FIND to %s for series sizes: association %s",
            peer,
            "rejected" if assoc.is_rejected else "aborted",
        )
        return {}
    sizes: dict[str, int] = {}
    try:
        for series_uid, study_uid in series.items():
            for status, identifier in assoc.send_c_find(
                series_query(study_uid, series_uid), STUDY_ROOT_FIND
            ):
                code = getattr(status, "Status", None)
                if code is None:
                    log.warning("C-FIND to %s: no answer within %g s", peer, timeout)
                    return sizes
                if code in PENDING and identifier is not None:
                    count = identifier.get("NumberOfSeriesRelatedInstances")
                    if identifier.get("SeriesInstanceUID") == series_uid and count not in (
                        None,
                        "",
                    ):
                        sizes[series_uid] = int(count)
                elif code not in PENDING and code != 0x0000:
                    log.warning("C-FIND to %s answered status 0x%04X", peer, code)
    finally:
        if assoc.is_established:
            assoc.release()
    return sizes
