"""The DICOM Conformance Statement: committed as generated, and saying what the code does."""

from __future__ import annotations

from click.testing import CliRunner

from covidscan.dicom_syntaxes import DECODED_TRANSFER_SYNTAXES
from dicomnet import listener
from dicomnet.conformance import SR_PATH, STOW_RS_PATH, statement
from tests.conftest import ROOT

COMMITTED = ROOT / "docs" / "conformance.md"
REGENERATE = "run `make conformance` (or `covidscan conformance > docs/conformance.md`)"


def test_the_committed_copy_is_what_the_code_generates():
    assert COMMITTED.exists(), f"docs/conformance.md is missing: {REGENERATE}"
    assert COMMITTED.read_text() == statement(), (
        f"docs/conformance.md differs from what the code does: {REGENERATE} and commit it"
    )


def test_the_command_prints_the_statement():
    from cli.main import main

    result = CliRunner().invoke(main, ["conformance"])
    assert result.exit_code == 0, result.output
    assert result.output == statement()


def test_the_statement_names_what_the_listener_accepts():
    from pydicom.uid import UID

    text = statement()
    ae = listener.application_entity(listener.DEFAULT_AE_TITLE)
    accepted = {str(c.abstract_syntax): list(c.transfer_syntax) for c in ae.supported_contexts}
    assert accepted["1.2.840.10008.1.1"]  # Verification
    assert accepted["1.2.840.10008.5.1.4.1.1.2"] == list(DECODED_TRANSFER_SYNTAXES)
    assert accepted["1.2.840.10008.1.20.1"]  # Storage Commitment reports
    assert f"accepts {len(accepted) - 2} storage SOP classes" in text
    for syntax in DECODED_TRANSFER_SYNTAXES:
        assert f"| {UID(syntax).name} | `{syntax}` |" in text
    for status in ("0x0000", "0xA700", "0x0122", "0xC000"):
        assert f"| {status} |" in text
    assert "CT Image Storage `1.2.840.10008.5.1.4.1.1.2`" in text
    assert '(DCM, 113100, "Basic Application Confidentiality Profile")' in text
    assert "113108" not in text
    assert "not yet" in text


def test_the_http_paths_it_names_are_served():
    from api import create_app

    app = create_app({"DATABASE_URL": "sqlite://", "REDIS_URL": "redis://127.0.0.1:1/0"})
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert STOW_RS_PATH in rules
    assert SR_PATH.replace("{id}", "<job_id>").replace("{series_uid}", "<series_uid>") in rules
