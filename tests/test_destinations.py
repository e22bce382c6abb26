"""PACS destinations: sealed credentials, the CLI against a real Orthanc, the admin API."""

import base64
import json
import secrets

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text

from api.schemas import DestinationInfo, DestinationList
from cli.main import main
from core.destinations import DestinationError, dicomweb_spec, parse_dicom_address
from core.sealing import DESTINATION_CREDENTIALS, PATIENT_ATTRIBUTES, MissingKey, Sealer, SealError
from covidscan.settings import ConfigError, load_settings
from db import migrate
from devtools.devstack import stored_phi_key
from devtools.embedded_redis import free_port
from tests.conftest import authorised, create_api_key
from tests.pacs import Orthanc, require_orthanc

PASSWORD = "s3cret-Pa55word-for-the-pacs"
TOKEN = "tok-0123456789abcdef-bearer"


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


# Sealing


def test_sealed_bytes_open_again_and_never_show_the_plaintext():
    sealer = Sealer.from_setting(new_key())
    first = sealer.seal(DESTINATION_CREDENTIALS, PASSWORD.encode())
    second = sealer.seal(DESTINATION_CREDENTIALS, PASSWORD.encode())
    assert first != second  # a fresh nonce each time
    assert PASSWORD.encode() not in first
    assert sealer.open(DESTINATION_CREDENTIALS, first) == PASSWORD.encode()
    assert sealer.open(DESTINATION_CREDENTIALS, second) == PASSWORD.encode()


def test_a_tampered_truncated_or_foreign_blob_is_refused():
    key = new_key()
    sealer = Sealer.from_setting(key)
    blob = sealer.seal(DESTINATION_CREDENTIALS, b"attributes")
    for position in (0, 5, len(blob) // 2, len(blob) - 1):
        altered = bytearray(blob)
        altered[position] ^= 0x01
        with pytest.raises(SealError, match="altered|unknown version"):
            sealer.open(DESTINATION_CREDENTIALS, bytes(altered))
    with pytest.raises(SealError, match="truncated"):
        sealer.open(DESTINATION_CREDENTIALS, blob[:20])
    with pytest.raises(SealError, match="another PHI_KEY"):
        Sealer.from_setting(new_key()).open(DESTINATION_CREDENTIALS, blob)
    with pytest.raises(SealError, match="altered"):  # sealed for one purpose, opened as another
        sealer.open(PATIENT_ATTRIBUTES, blob)
    with pytest.raises(SealError, match="unknown sealing purpose"):
        sealer.seal("anything", b"x")


def test_phi_key_is_checked_by_the_settings_and_named_when_missing():
    assert load_settings({"PHI_KEY": new_key()}).phi_key
    assert load_settings({}).phi_key is None
    for wrong in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(ConfigError, match="PHI_KEY"):
            load_settings({"PHI_KEY": wrong})
    with pytest.raises(MissingKey, match="PHI_KEY is not set"):
        Sealer.from_setting(None, "registering a destination with credentials")
    key = new_key()
    assert key not in repr(load_settings({"PHI_KEY": key}))


def test_make_run_keeps_one_phi_key_under_var(tmp_path):
    path = tmp_path / "var" / "phi-key"
    key = stored_phi_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert stored_phi_key(path) == key
    assert load_settings({"PHI_KEY": key}).phi_key == key


@pytest.mark.parametrize(
    "address, parsed",
    [
        ("PACS@pacs.example.org:104", ("PACS", "pacs.example.org", 104)),
        ("ORTHANC@127.0.0.1:4242", ("ORTHANC", "127.0.0.1", 4242)),
        ("A B@[::1]:11112", ("A B", "::1", 11112)),
    ],
)
def test_a_dicom_address_is_parsed(address, parsed):
    assert parse_dicom_address(address) == parsed


@pytest.mark.parametrize(
    "address",
    [
        "pacs.example.org:104",
        "PACS@host",
        "PACS@host:0",
        "PACS@host:70000",
        "WAY_TOO_LONG_AE_TITLE@host:104",
        "BACK\\SLASH@host:104",
    ],
)
def test_a_wrong_dicom_address_says_what_is_expected(address):
    with pytest.raises(DestinationError):
        parse_dicom_address(address)


def test_a_dicomweb_destination_takes_one_kind_of_credentials():
    with pytest.raises(DestinationError, match="not both"):
        dicomweb_spec("web", "https://pacs/dicom-web", token="t", basic="u:p")
    with pytest.raises(DestinationError, match="USER:PASSWORD"):
        dicomweb_spec("web", "https://pacs/dicom-web", basic="no-colon")
    with pytest.raises(DestinationError, match="http"):
        dicomweb_spec("web", "ftp://pacs/dicom-web")
    assert PASSWORD not in repr(dicomweb_spec("web", "https://p/d", basic=f"u:{PASSWORD}"))


# The CLI, against a real Orthanc


@pytest.fixture
def cli_env(tmp_path, database_url):
    return {
        "DATABASE_URL": database_url,
        "MODEL_PATH": "",
        "PHI_KEY": new_key(),
        "COVIDSCAN_VAR_DIR": str(tmp_path / "var"),
    }


def run(env, *args):
    return CliRunner().invoke(main, ["destinations", *args], env=env, catch_exceptions=False)


def raw_credentials(database_url: str) -> list[bytes]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [
                bytes(row[0])
                for row in conn.execute(
                    text("SELECT credentials FROM destinations WHERE credentials IS NOT NULL")
                )
            ]
    finally:
        engine.dispose()


@pytest.fixture
def closed_port():
    """A port bound by nothing that listens, and held so that nothing else takes it."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.fixture
def orthanc(tmp_path):
    require_orthanc()
    with Orthanc(
        tmp_path / "orthanc",
        free_port(),
        free_port(),
        check_called_aet=True,
        users={"pacsadmin": PASSWORD},
    ) as pacs:
        yield pacs


@pytest.mark.integration
def test_cli_adds_tests_lists_and_removes_orthanc_by_dicom_and_dicomweb(orthanc, cli_env):
    dicom = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    added = run(cli_env, "add", "orthanc", "--dicom", dicom)
    assert added.exit_code == 0, added.output
    tested = run(cli_env, "test", "orthanc")
    assert tested.exit_code == 0, tested.output
    assert "C-ECHO" in tested.output and "succeeded" in tested.output
    web = run(
        cli_env,
        "add",
        "orthanc-web",
        "--dicomweb",
        f"{orthanc.url}/dicom-web",
        "--basic",
        f"pacsadmin:{PASSWORD}",
    )
    assert web.exit_code == 0, web.output
    tested = run(cli_env, "test", "orthanc-web")
    assert tested.exit_code == 0, tested.output
    assert "QIDO-RS" in tested.output and "200" in tested.output
    listed = run(cli_env, "list")
    assert listed.exit_code == 0
    assert "orthanc  dicom ORTHANC@" in listed.output and "credentials: no" in listed.output
    assert "orthanc-web  dicomweb" in listed.output and "credentials: yes" in listed.output
    as_json = run(cli_env, "list", "--json")
    assert PASSWORD not in listed.output + as_json.output + web.output
    assert [json.loads(line)["has_credentials"] for line in as_json.output.splitlines()] == [
        False,
        True,
    ]
    [sealed] = raw_credentials(cli_env["DATABASE_URL"])
    assert PASSWORD.encode() not in sealed and b"pacsadmin" not in sealed
    removed = run(cli_env, "remove", "orthanc")
    assert removed.exit_code == 0 and "removed orthanc" in removed.output
    assert "orthanc  dicom" not in run(cli_env, "list").output
    assert run(cli_env, "remove", "orthanc").exit_code == 1


@pytest.mark.integration
def test_cli_test_says_what_failed(orthanc, cli_env, closed_port):
    closed = closed_port
    run(cli_env, "add", "closed", "--dicom", f"PACS@127.0.0.1:{closed}")
    run(cli_env, "add", "wrong-aet", "--dicom", f"NOT_ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    run(
        cli_env,
        "add",
        "wrong-password",
        "--dicomweb",
        f"{orthanc.url}/dicom-web",
        "--basic",
        "pacsadmin:guess",
    )
    run(
        cli_env,
        "add",
        "no-service",
        "--dicomweb",
        f"{orthanc.url}/not-dicom-web",
        "--basic",
        f"pacsadmin:{PASSWORD}",
    )
    run(cli_env, "add", "closed-web", "--dicomweb", f"http://127.0.0.1:{closed}/dicom-web")
    expected = {
        "closed": "connection refused",
        "closed-web": "connection refused",
        "wrong-aet": "association rejected",
        "wrong-password": "HTTP 401: the credentials were refused",
        "no-service": "HTTP 404",
    }
    for name, reason in expected.items():
        result = run(cli_env, "test", name, "--timeout", "30")  # a refusal comes at once
        assert result.exit_code == 1, (name, result.output)
        assert reason in result.output, (name, result.output)
    rejected = run(cli_env, "test", "wrong-aet").output
    assert "Called AE title not recognised" in rejected


@pytest.mark.integration
def test_cli_without_phi_key_registers_only_destinations_without_credentials(cli_env):
    env = {**cli_env, "PHI_KEY": ""}
    refused = run(
        env, "add", "web", "--dicomweb", "https://pacs.example.org/dicom-web", "--token", TOKEN
    )
    assert refused.exit_code == 1 and "PHI_KEY is not set" in refused.output
    assert run(env, "add", "web", "--dicomweb", "https://pacs.example.org/dicom-web").exit_code == 0
    assert run(env, "add", "web", "--dicomweb", "https://x.example.org").exit_code == 1
    wrong = run({**cli_env, "PHI_KEY": "nope"}, "list")
    assert wrong.exit_code == 1 and "PHI_KEY" in wrong.output
    assert run(cli_env, "add", "both", "--dicom", "A@h:1", "--dicomweb", "https://h").exit_code == 2


# The API


@pytest.fixture
def admin_app(app_config):
    from api import create_app

    return create_app({**app_config, "PHI_KEY": new_key()})


@pytest.fixture
def admin(admin_app, app_config):
    return authorised(
        admin_app.test_client(), create_api_key(app_config["DATABASE_URL"], "root", "admin")
    )


@pytest.mark.integration
def test_api_registers_lists_and_removes_destinations_for_administrators(admin, app_config):
    dicom = admin.post(
        "/v1/destinations",
        json={
            "name": "pacs",
            "kind": "dicom",
            "ae_title": "PACS",
            "host": "pacs.example.org",
            "port": 104,
            "tls": True,
        },
    )
    assert dicom.status_code == 201, dicom.get_json()
    assert dicom.get_json()["commitment"] is True and dicom.get_json()["tls"] is True
    web = admin.post(
        "/v1/destinations",
        json={
            "name": "web",
            "kind": "dicomweb",
            "url": "https://pacs.example.org/dicom-web/",
            "token": TOKEN,
        },
    )
    assert web.status_code == 201, web.get_json()
    assert web.get_json()["has_credentials"] is True and TOKEN not in web.get_data(True)
    assert web.get_json()["url"] == "https://pacs.example.org/dicom-web"
    listed = admin.get("/v1/destinations")
    assert listed.status_code == 200 and TOKEN not in listed.get_data(True)
    DestinationList.model_validate(listed.get_json())  # the documented shape, exactly
    DestinationInfo.model_validate(dicom.get_json())
    assert [(d["name"], d["has_credentials"]) for d in listed.get_json()["destinations"]] == [
        ("pacs", False),
        ("web", True),
    ]
    assert TOKEN.encode() not in b"".join(raw_credentials(app_config["DATABASE_URL"]))
    assert (
        admin.post(
            "/v1/destinations",
            json={"name": "web", "kind": "dicomweb", "url": "https://x.example.org"},
        ).status_code
        == 409
    )
    assert admin.delete("/v1/destinations/pacs").status_code == 204
    assert admin.delete("/v1/destinations/pacs").status_code == 404
    assert [d["name"] for d in admin.get("/v1/destinations").get_json()["destinations"]] == ["web"]
    actions = [e["action"] for e in admin.get("/v1/audit").get_json()["events"]]
    assert actions[:3] == ["destination.remove", "destination.add", "destination.add"]


@pytest.mark.integration
@pytest.mark.parametrize(
    "body, message",
    [
        ({"name": "x", "kind": "dicom", "host": "h", "port": 104}, "needs ae_title"),
        ({"name": "x", "kind": "dicom", "ae_title": "A", "host": "h", "port": 0}, "port"),
        ({"name": "x", "kind": "dicomweb"}, "needs url"),
        ({"name": "x", "kind": "dicomweb", "url": "https://h", "ae_title": "A"}, "for dicom"),
        (
            {"name": "x", "kind": "dicom", "ae_title": "A", "host": "h", "port": 1, "token": "t"},
            "for dicomweb",
        ),
        ({"name": "x y", "kind": "dicomweb", "url": "https://h"}, "name"),
        ({"name": "x", "kind": "ftp"}, "kind"),
        ({"name": "x", "kind": "dicomweb", "url": "https://h", "password": "p"}, "password"),
    ],
)
def test_api_says_which_field_is_wrong(admin, body, message):
    response = admin.post("/v1/destinations", json=body)
    assert response.status_code == 400
    assert message in response.get_json()["detail"]


@pytest.mark.integration
def test_api_without_phi_key_refuses_credentials_naming_it(app, app_config):
    admin = authorised(
        app.test_client(), create_api_key(app_config["DATABASE_URL"], "root", "admin")
    )
    refused = admin.post(
        "/v1/destinations",
        json={"name": "web", "kind": "dicomweb", "url": "https://h/dicom-web", "token": TOKEN},
    )
    assert refused.status_code == 400 and "PHI_KEY" in refused.get_json()["detail"]
    assert (
        admin.post(
            "/v1/destinations",
            json={"name": "web", "kind": "dicomweb", "url": "https://h/dicom-web"},
        ).status_code
        == 201
    )


@pytest.mark.integration
def test_api_destinations_are_for_administrators_only(admin_app, client):
    assert client.get("/v1/destinations").status_code == 403
    assert (
        client.post(
            "/v1/destinations", json={"name": "web", "kind": "dicomweb", "url": "https://h"}
        ).status_code
        == 403
    )
    assert client.delete("/v1/destinations/web").status_code == 403


# The migration


@pytest.mark.database
def test_the_destinations_table_comes_and_goes_with_its_revision(database_url):
    def tables() -> set[str]:
        engine = create_engine(database_url)
        try:
            return set(inspect(engine).get_table_names())
        finally:
            engine.dispose()

    assert "destinations" in tables()
    migrate.downgrade(database_url, "0012_open_jobs")
    assert "destinations" not in tables()
    migrate.upgrade(database_url)
    assert "destinations" in tables()


# TLS, against a pynetdicom SCP with a certificate of the test's own


def self_signed(folder):
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test pacs")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "pacs.pem", folder / "pacs.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_scp(tmp_path):
    import ssl

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    ae = AE(ae_title="TLSPACS")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=context)
    try:
        yield port, cert
    finally:
        server.shutdown()


def test_c_echo_over_tls_trusts_only_known_certificates(tls_scp, monkeypatch):
    from dicomnet.probe import echo

    port, cert = tls_scp
    untrusted = echo("127.0.0.1", port, "TLSPACS", tls=True, timeout=5)
    assert not untrusted.ok and "certificate is not trusted" in untrusted.message
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # as the system's trust store would
    trusted = echo("127.0.0.1", port, "TLSPACS", tls=True, timeout=5)
    assert trusted.ok and "over TLS" in trusted.message, trusted.message
    assert "Storage Commitment not offered" in trusted.message


@pytest.fixture
def token_service():
    """A DICOMweb service stand-in that answers QIDO-RS only to ``Bearer TOKEN``."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            ok = self.headers.get("Authorization") == f"Bearer {TOKEN}"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/dicom+json")
            self.end_headers()
            self.wfile.write(b"[]" if ok else b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", seen
    finally:
        server.shutdown()
        server.server_close()


def test_qido_probe_sends_the_bearer_token(token_service, cli_env):
    url, seen = token_service
    added = CliRunner().invoke(
        main,
        ["destinations", "add", "web", "--dicomweb", url, "--token", "-"],
        env=cli_env,
        input=f"{TOKEN}\n",
    )
    assert added.exit_code == 0, added.output
    assert run(cli_env, "add", "anonymous", "--dicomweb", url).exit_code == 0
    tested = run(cli_env, "test", "web")
    assert tested.exit_code == 0, tested.output
    assert seen[-1] == ("/dicom-web/studies?limit=1", f"Bearer {TOKEN}")
    refused = run(cli_env, "test", "anonymous")
    assert refused.exit_code == 1 and "HTTP 401" in refused.output
    assert TOKEN not in tested.output + run(cli_env, "list", "--json").output
