"""What a PACS administrator expects of the DICOM gateway: association limits and timeouts
from the settings, and each association and refusal logged in DICOM terms with its reason."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pydicom
import pytest

from covidscan.settings import load_settings
from devtools.embedded_redis import free_port
from dicomnet.commitment import STORAGE_COMMITMENT
from tests import dicom_files as d

AE_TITLE = "COVIDSCAN"


def test_the_ae_takes_its_limits_and_timeouts_from_the_settings():
    from dicomnet.listener import application_entity

    settings = load_settings({"DICOM_MAX_ASSOCIATIONS": "3", "DICOM_TIMEOUT": "7"})
    ae = application_entity(
        AE_TITLE, max_associations=settings.dicom_max_associations, timeout=settings.dicom_timeout
    )
    assert ae.maximum_associations == 3
    assert ae.acse_timeout == ae.dimse_timeout == ae.network_timeout == 7
    defaults = application_entity(AE_TITLE)
    assert defaults.maximum_associations == 10 and defaults.network_timeout == 30
    [commitment] = [c for c in ae.supported_contexts if c.abstract_syntax == STORAGE_COMMITMENT]
    # The PACS opens the association that carries its report, as the SCP of the SOP class.
    assert (commitment.scu_role, commitment.scp_role) == (False, True)


@contextmanager
def listening(config: dict[str, str]) -> Iterator[int]:
    from dicomnet.listener import start

    port = free_port()
    _server, stop = start(load_settings(config), "127.0.0.1", port, AE_TITLE, "pacs", ("CT",))
    try:
        yield port
    finally:
        stop()


def associate(port: int, calling: str):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    return ae.associate("127.0.0.1", port, ae_title=AE_TITLE)


def lines(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.mark.integration
def test_one_association_too_many_is_rejected_with_the_reason(app_config, caplog):
    with (
        caplog.at_level("INFO", logger="dicomnet"),
        listening({**app_config, "DICOM_MAX_ASSOCIATIONS": "1"}) as port,
    ):
        first = associate(port, "FIRST")
        assert first.is_established
        try:
            second = associate(port, "SECOND")
            assert second.is_rejected
            answer = second.acceptor.primitive
            assert (answer.result, answer.result_source, answer.diagnostic) == (2, 3, 2)
        finally:
            first.release()
        third = associate(port, "THIRD")  # room again once the first ended
        assert third.is_established
        third.release()
    [accepted] = lines(caplog, "association from FIRST@127.0.0.1 to COVIDSCAN accepted")
    [rejected] = lines(caplog, "association from SECOND@127.0.0.1 to COVIDSCAN rejected")
    assert "Local limit exceeded (DICOM_MAX_ASSOCIATIONS=1 associations are open)" in rejected
    assert lines(caplog, "association from FIRST@127.0.0.1 released: no instance sent")


@pytest.mark.integration
def test_a_caller_not_allowed_is_rejected_with_the_setting_named(app_config, caplog):
    config = {**app_config, "DICOM_ALLOWED_AE_TITLES": "PACS"}
    with caplog.at_level("INFO", logger="dicomnet"), listening(config) as port:
        assert associate(port, "INTRUDER").is_rejected
    [rejected] = lines(caplog, "association from INTRUDER@127.0.0.1 to COVIDSCAN rejected")
    assert "Calling AE title not recognised (not in DICOM_ALLOWED_AE_TITLES)" in rejected


@pytest.mark.integration
def test_an_idle_association_is_aborted_after_the_timeout_and_refusals_say_why(app_config, caplog):
    with (
        caplog.at_level("INFO", logger="dicomnet"),
        listening({**app_config, "DICOM_TIMEOUT": "1"}) as port,
    ):
        assoc = associate(port, "SLOW")
        assert assoc.is_established
        report = pydicom.dcmread(io.BytesIO(d.ct_bytes(Modality="MR")))
        assert assoc.send_c_store(report).Status == 0x0122
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.1)
        assert assoc.is_aborted
    [refused] = lines(caplog, "C-STORE from SLOW@127.0.0.1 refused with status 0x0122")
    assert "MR" in refused
    assert lines(caplog, "association from SLOW@127.0.0.1 aborted: 0 instance(s) stored, 1 refused")
