"""Is a PACS destination reachable? A C-ECHO (DICOM) or a QIDO-RS query (DICOMweb).

``covidscan destinations test NAME`` runs these. The answer says what failed in a PACS
administrator's words: the host not found, the connection refused or timed out, the
association rejected (with the reason the PACS gave) or aborted, the C-ECHO's status, or
the HTTP status of the query.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Optional

import requests

from core.destinations import Credentials
from db.models import Destination, DestinationKind

log = logging.getLogger(__name__)

CALLING_AE_TITLE = "COVIDSCAN"
DEFAULT_TIMEOUT = 10.0
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
# pynetdicom.sop_class.Verification's UID: that module makes its SOP classes at import time,
# so type checkers do not see them.
VERIFICATION = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class ProbeResult:
    """Whether the destination answered, and in either case what happened."""

    ok: bool
    message: str


def probe(
    row: Destination,
    credentials: Optional[Credentials] = None,
    timeout: float = DEFAULT_TIMEOUT,
    calling_ae_title: str = CALLING_AE_TITLE,
) -> ProbeResult:
    """Probe ``row`` the way its kind is reached; never raises for a network failure."""
    if row.kind == DestinationKind.DICOM:
        return echo(
            str(row.host),
            int(row.port or 0),
            str(row.ae_title),
            tls=row.tls,
            timeout=timeout,
            calling_ae_title=calling_ae_title,
        )
    return qido(str(row.url), credentials, timeout=timeout)


def _connect_failure(
    host: str, port: int, timeout: float, tls: Optional[ssl.SSLContext] = None
) -> Optional[str]:
    """Why a TCP connection (and with ``tls``, a TLS handshake) to ``host:port`` cannot be
    made, or None when it can."""
    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        return f"host {host!r} not found"
    except ConnectionRefusedError:
        return f"connection refused by {where} (nothing listens on that port)"
    except TimeoutError:
        return f"connection to {where} timed out after {timeout:g} s"
    except OSError as exc:
        return f"cannot connect to {where}: {exc.strerror or exc}"
    with sock:
        if tls is None:
            return None
        try:
            with tls.wrap_socket(sock, server_hostname=host):
                return None
        except ssl.SSLCertVerificationError as exc:
            return f"TLS with {where} failed: its certificate is not trusted ({exc.verify_message})"
        except ssl.SSLError as exc:
            return f"TLS with {where} failed: {exc.reason or exc}"
        except TimeoutError:
            return f"TLS handshake with {where} timed out after {timeout:g} s"
        except OSError as exc:
            return f"TLS with {where} failed: {exc.strerror or exc} (does it speak TLS?)"


ASSOCIATION_TRIES = 3
"""Associations tried before an abort with no answer is reported as such."""


def echo(
    host: str,
    port: int,
    ae_title: str,
    *,
    tls: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    calling_ae_title: str = CALLING_AE_TITLE,
) -> ProbeResult:
    """A C-ECHO to ``ae_title`` at ``host:port`` (over TLS when ``tls``), asking also whether
    the PACS offers Storage Commitment (Push Model) as SCP."""
    from pynetdicom import AE

    context = ssl.create_default_context() if tls else None
    failure = _connect_failure(host, port, timeout, context)
    if failure:
        return ProbeResult(False, failure)
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    tls_args = (context, host) if context is not None else None
    called = f"{ae_title}@{host}:{port}"
    for attempt in range(ASSOCIATION_TRIES):
        try:
            assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
        except (OSError, ssl.SSLError) as exc:
            return ProbeResult(False, f"cannot open an association with {called}: {exc}")
        # A PACS that rejects and closes at once can have its connection seen closed before
        # its A-ASSOCIATE-RJ is read (an abort with no reason): ask again for the reason.
        if assoc.is_rejected or assoc.is_established or attempt == ASSOCIATION_TRIES - 1:
            break
    try:
        if assoc.is_rejected:
            answer = assoc.acceptor.primitive
            reason = (
                (f"{answer.reason_str} ({answer.result_str}, by the {answer.source_str})")
                if answer is not None
                else "no reason given"
            )
            return ProbeResult(False, f"association rejected by {called}: {reason}")
        if not assoc.is_established:
            return ProbeResult(
                False,
                f"association with {called} aborted: the PACS gave no "
                "acceptable answer to the association request",
            )
        if not any(cx.abstract_syntax == VERIFICATION for cx in assoc.accepted_contexts):
            return ProbeResult(False, f"{called} does not accept Verification (C-ECHO)")
        status = assoc.send_c_echo()
        code = getattr(status, "Status", None)
        if code is None:
            return ProbeResult(
                False,
                f"no answer to the C-ECHO from {called} within {timeout:g} s (association aborted)",
            )
        if code != 0x0000:
            return ProbeResult(False, f"{called} answered the C-ECHO with status 0x{code:04X}")
        commitment = any(
            cx.abstract_syntax == STORAGE_COMMITMENT_PUSH for cx in assoc.accepted_contexts
        )
        return ProbeResult(
            True,
            f"C-ECHO to {called} succeeded"
            f"{' over TLS' if tls else ''}; Storage Commitment "
            f"{'offered' if commitment else 'not offered'}",
        )
    finally:
        if assoc.is_established:
            assoc.release()


def qido(
    url: str, credentials: Optional[Credentials] = None, timeout: float = DEFAULT_TIMEOUT
) -> ProbeResult:
    """``GET {url}/studies?limit=1`` with the destination's credentials."""
    target = f"{url.rstrip('/')}/studies"
    headers = {"Accept": "application/dicom+json"}
    auth = None
    if credentials is not None and credentials.token:
        headers["Authorization"] = f"Bearer {credentials.token}"
    elif credentials is not None and credentials.basic:
        auth = credentials.basic
    try:
        response = requests.get(
            target,
            params={"limit": "1"},
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=False,
        )
    except requests.exceptions.SSLError as exc:
        return ProbeResult(False, f"TLS failed with {url}: {exc}")
    except requests.exceptions.ConnectTimeout:
        return ProbeResult(False, f"connection to {url} timed out after {timeout:g} s")
    except requests.exceptions.ReadTimeout:
        return ProbeResult(False, f"no answer from {url} within {timeout:g} s")
    except requests.exceptions.ConnectionError as exc:
        cause = _socket_cause(exc)
        if isinstance(cause, ConnectionRefusedError):
            return ProbeResult(False, f"connection refused by {url} (nothing listens there)")
        if isinstance(cause, socket.gaierror):
            return ProbeResult(False, f"host of {url} not found")
        return ProbeResult(False, f"cannot connect to {url}: {cause or exc}")
    code = response.status_code
    if code in (200, 204):
        return ProbeResult(True, f"QIDO-RS query to {target} answered {code}")
    hints = {
        401: "the credentials were refused",
        403: "access forbidden to these credentials",
        404: "no DICOMweb service at this URL (check the base URL)",
    }
    hint = hints.get(code, response.reason or "unexpected answer")
    return ProbeResult(False, f"QIDO-RS query to {target} answered HTTP {code}: {hint}")


def _socket_cause(exc: BaseException) -> Optional[OSError]:
    """The socket error under requests' and urllib3's wrappers, if there is one."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (ConnectionRefusedError, socket.gaierror)):
            return current
        reason = getattr(current, "reason", None)
        nested = [reason, current.__cause__, current.__context__, *current.args]
        stack.extend(e for e in nested if isinstance(e, BaseException))
    return None
