"""Pulling a cohort: ``POST /v1/retrievals`` against a real Orthanc, run by the real gateway.

Two studies are stored in Orthanc with accession numbers; a retrieval asks for one of them
and for one the PACS does not hold. The DICOM gateway (``dicomnet.listener.start``, as
``covidscan dicom-listen`` runs it) finds them by C-FIND, fetches the CT series by C-GET and
submits the instances as a job through the job service.
"""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
import uuid
from datetime import datetime

import pydicom
import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, select, text
from werkzeug.serving import make_server

from api.schemas import RetrievalInfo, RetrievalList
from core.destinations import dicom_spec, dicomweb_spec, register
from covidscan.contract import RetrievalOutcome, RetrievalStatus, ScanStatus
from covidscan.retrieve_window import RetrieveWindow, parse_window, window_open
from covidscan.settings import ConfigError, load_settings
from db.models import AuditEvent, Job, RetrievalItem, Scan
from db.retrievals import retrieval_status
from db.session import make_engine, make_session_factory
from devtools.embedded_redis import free_port
from tests import dicom_files as d
from tests.conftest import authorised, create_api_key
from tests.pacs import Orthanc, require_orthanc

KNOWN, UNKNOWN, OTHER = "ACC-KNOWN-0001", "ACC-NOPE-0002", "ACC-OTHER-0003"
GATEWAY_AE = "COVIDSCAN"


# RETRIEVE_WINDOW


def test_a_window_is_parsed_and_open_inside_its_hours_only():
    night = parse_window("22:00-06:00")
    assert str(night) == "22:00-06:00"
    at = lambda hh, mm: datetime(2026, 12, 7, hh, mm)  # noqa: E731
    assert [night.is_open(at(h, m)) for h, m in [(22, 0), (23, 59), (0, 0), (5, 59)]] == [True] * 4
    assert [night.is_open(at(h, m)) for h, m in [(6, 0), (12, 0), (21, 59)]] == [False] * 3
    lunch = parse_window("12:00 - 13:30")
    assert lunch.is_open(at(12, 45)) and not lunch.is_open(at(13, 30))
    assert not lunch.is_open(at(11, 59))
    assert window_open(None) and not window_open(lunch, at(14, 0))
    for wrong in ("22-06", "25:00-06:00", "10:60-11:00", "10:00-10:00", "later"):
        with pytest.raises(ValueError):
            parse_window(wrong)


def test_retrieve_window_is_a_setting_named_when_wrong():
    assert load_settings({"RETRIEVE_WINDOW": "22:00-06:00"}).retrieve_window == RetrieveWindow(
        *parse_window("22:00-06:00").__dict__.values()
    )
    assert load_settings({"RETRIEVE_WINDOW": "  "}).retrieve_window is None
    with pytest.raises(ConfigError, match="RETRIEVE_WINDOW"):
        load_settings({"RETRIEVE_WINDOW": "night"})


def test_a_retrieval_waits_for_its_window_while_items_wait():
    waiting = RetrievalItem(position=0, status=ScanStatus.QUEUED)
    running = RetrievalItem(position=1, status=ScanStatus.RUNNING)
    ended = RetrievalItem(position=2, status=ScanStatus.SUCCEEDED)
    assert retrieval_status([waiting, ended], window_open=False) == RetrievalStatus.WAITING_WINDOW
    assert retrieval_status([waiting, ended], window_open=True) == RetrievalStatus.QUEUED
    assert retrieval_status([waiting, running], window_open=False) == RetrievalStatus.RUNNING
    assert retrieval_status([ended], window_open=False) == RetrievalStatus.DONE


# Against a real PACS


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def with_accession(files: list[bytes], accession: str) -> list[bytes]:
    out = []
    for body in files:
        dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(body))
        dataset.AccessionNumber = accession
        out.append(d.to_bytes(dataset))
    return out


@pytest.fixture
def orthanc(tmp_path):
    require_orthanc()
    with Orthanc(
        tmp_path / "orthanc", free_port(), free_port(), {"covidscan": (GATEWAY_AE, free_port())}
    ) as pacs:
        yield pacs


def upload_studies(pacs: Orthanc) -> tuple[str, list[str]]:
    """A study of 3 CT slices under KNOWN, one of 2 under OTHER; the first's UIDs."""
    known, known_uids = d.ct_series(3, seed=1)
    other, _ = d.ct_series(2, seed=2)
    for body in with_accession(known, KNOWN) + with_accession(other, OTHER):
        pacs.upload(body)
    study_uid = str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(known[0])).StudyInstanceUID)
    return study_uid, known_uids


@pytest.fixture
def studies(orthanc):
    return upload_studies(orthanc)


@pytest.fixture
def config(app_config):
    return {**app_config, "PHI_KEY": new_key(), "RETRIEVE_POLL_INTERVAL": "1"}


def add_source(database_url: str, orthanc: Orthanc, name: str = "pacs") -> None:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine).begin() as session:
            spec = dicom_spec(name, orthanc.ae_title, "127.0.0.1", orthanc.dicom_port)
            register(session, spec, None)
    finally:
        engine.dispose()


def start_gateway(config: dict[str, str]):
    """The DICOM gateway as ``covidscan dicom-listen`` starts it (its receiver and its
    retriever loop), in this process so that its logs are captured."""
    from dicomnet.listener import start

    _server, stop = start(
        load_settings(config), "127.0.0.1", free_port(), GATEWAY_AE, "radiology", ("CT",)
    )
    return stop


@pytest.fixture
def api(config):
    from api import create_app

    owner = f"research-{uuid.uuid4().hex[:8]}"
    app = create_app(config)
    key = create_api_key(config["DATABASE_URL"], owner)
    return authorised(app.test_client(), key), owner, app, key


def wait_done(client, retrieval_id: str, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = client.get(f"/v1/retrievals/{retrieval_id}")
        assert answer.status_code == 200, answer.get_json()
        if answer.get_json()["status"] == "done":
            return answer.get_json()
        time.sleep(0.3)
    raise AssertionError(f"retrieval not done: {answer.get_json()}")


def metric(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def all_sql_text(database_url: str) -> str:
    """Every value of every table, as text (a sealed value is bytes: its repr)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            parts = []
            for table in inspect(conn).get_table_names():
                for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                    parts.extend(repr(value) for value in row)
            return "\n".join(parts)
    finally:
        engine.dispose()


@pytest.mark.integration
def test_a_cohort_is_retrieved_by_accession_numbers(orthanc, studies, config, api, caplog):
    caplog.set_level(logging.DEBUG)
    study_uid, sop_uids = studies
    add_source(config["DATABASE_URL"], orthanc)
    client, owner, *_ = api
    retrieved_before = metric("covidscan_retrieval_items_total", outcome="retrieved")
    instances_before = metric("covidscan_retrieved_instances_total")
    stop = start_gateway(config)
    try:
        posted = client.post(
            "/v1/retrievals", json={"source": "pacs", "accession_numbers": [KNOWN, UNKNOWN]}
        )
        assert posted.status_code == 202, posted.get_json()
        assert posted.headers["Location"].endswith(posted.get_json()["id"])
        RetrievalInfo.model_validate(posted.get_json())
        done = wait_done(client, posted.get_json()["id"])
    finally:
        stop()
    RetrievalInfo.model_validate(done)
    known, unknown = done["items"]
    assert (known["index"], known["outcome"]) == (0, RetrievalOutcome.RETRIEVED)
    assert (known["instances_retrieved"], known["instances_expected"]) == (3, 3)
    assert known["study_uids"] == [study_uid]
    assert (unknown["index"], unknown["outcome"]) == (1, RetrievalOutcome.NOT_FOUND)
    assert unknown["job_id"] is None and unknown["instances_retrieved"] is None
    assert metric("covidscan_retrieval_items_total", outcome="retrieved") == retrieved_before + 1
    assert metric("covidscan_retrieved_instances_total") == instances_before + 3

    with make_session_factory(make_engine(config["DATABASE_URL"]))() as session:
        job = session.get(Job, known["job_id"])
        assert job is not None and job.owner == owner
        scans = session.scalars(select(Scan).where(Scan.job_id == job.id)).all()
        assert sorted(s.sop_instance_uid for s in scans) == sorted(sop_uids)
        [submitted] = session.scalars(
            select(AuditEvent).where(AuditEvent.job_id == job.id, AuditEvent.action == "job.submit")
        ).all()
        assert submitted.owner == owner
        assert submitted.detail["via"] == "retrieval" and submitted.detail["scans"] == 3
        assert session.scalars(select(Job)).all() == [job]  # the OTHER study was not pulled

    # The accession numbers are nowhere but sealed: not in SQL, the logs or the answers.
    answers = posted.get_data(as_text=True) + client.get(done["links"]["self"]).get_data(True)
    logs = caplog.text
    assert f"retrieval {done['id']} item 0: retrieved" in logs  # by index, never the accession
    sql = all_sql_text(config["DATABASE_URL"])
    for accession in (KNOWN, UNKNOWN):
        assert accession not in sql
        assert accession not in logs
        assert accession not in answers


@pytest.mark.integration
def test_the_quota_refuses_a_study_whole(orthanc, studies, config, api, tmp_path):
    config = {**config, "SCANS_PER_HOUR": "2"}
    add_source(config["DATABASE_URL"], orthanc)
    client, *_ = api
    stop = start_gateway(config)
    try:
        posted = client.post(
            "/v1/retrievals", json={"source": "pacs", "accession_numbers": [KNOWN]}
        )
        assert posted.status_code == 202, posted.get_json()
        done = wait_done(client, posted.get_json()["id"])
    finally:
        stop()
    [item] = done["items"]
    assert item["outcome"] == RetrievalOutcome.REFUSED, item
    assert "per hour" in item["reason"] or "quota" in item["reason"], item
    assert item["job_id"] is None and item["instances_retrieved"] == 0
    with make_session_factory(make_engine(config["DATABASE_URL"]))() as session:
        assert session.scalars(select(Job)).all() == []
        assert session.scalars(select(Scan)).all() == []
    blobs = tmp_path / "blobs"
    assert not blobs.exists() or not [p for p in blobs.rglob("*") if p.is_file()]


@pytest.mark.integration
def test_retrieval_by_study_uid_needs_no_phi_key(orthanc, studies, app_config, tmp_path):
    from api import create_app

    study_uid, _ = studies
    add_source(app_config["DATABASE_URL"], orthanc)
    client = authorised(
        create_app(app_config).test_client(), create_api_key(app_config["DATABASE_URL"], "r")
    )
    refused = client.post("/v1/retrievals", json={"source": "pacs", "accession_numbers": [KNOWN]})
    assert refused.status_code == 409 and "PHI_KEY" in refused.get_json()["detail"]
    assert KNOWN not in refused.get_data(as_text=True)
    stop = start_gateway(app_config)
    try:
        posted = client.post("/v1/retrievals", json={"source": "pacs", "study_uids": [study_uid]})
        assert posted.status_code == 202, posted.get_json()
        done = wait_done(client, posted.get_json()["id"])
    finally:
        stop()
    [item] = done["items"]
    assert item["outcome"] == "retrieved" and item["instances_retrieved"] == 3


@pytest.mark.integration
def test_a_request_is_checked_without_repeating_an_accession(config, api):
    client, *_ = api
    cases = [
        ({"source": "pacs", "accession_numbers": ["ACC*"]}, "wildcards"),
        ({"source": "pacs", "accession_numbers": ["A" * 17]}, "16 characters"),
        ({"source": "pacs"}, "accession_numbers or study_uids"),
        ({"source": "pacs", "study_uids": ["1.2.x"]}, "study_uids.0"),
        ({"source": "nowhere", "accession_numbers": ["ACC-1"]}, "no destination named"),
        ({"source": "pacs", "accession_numbers": "ACC*"}, "accession_numbers"),
        ({"source": "pacs", "accession_numbers": ["ACC*", 7]}, "accession_numbers.1"),
    ]
    for body, message in cases:
        answer = client.post("/v1/retrievals", json=body)
        assert answer.status_code == 400, (body, answer.get_json())
        assert message in answer.get_json()["detail"], answer.get_json()
        assert "ACC*" not in answer.get_data(as_text=True)
    assert client.get("/v1/retrievals/nope").status_code == 404


@pytest.mark.integration
def test_another_owner_cannot_read_a_retrieval(orthanc, config, api):
    from api import create_app

    add_source(config["DATABASE_URL"], orthanc)
    client, *_ = api
    posted = client.post("/v1/retrievals", json={"source": "pacs", "study_uids": ["1.2.3"]})
    assert posted.status_code == 202
    other = authorised(
        create_app(config).test_client(), create_api_key(config["DATABASE_URL"], "someone-else")
    )
    assert other.get(f"/v1/retrievals/{posted.get_json()['id']}").status_code == 404
    assert other.get("/v1/retrievals").get_json() == {"retrievals": []}
    second = client.post("/v1/retrievals", json={"source": "pacs", "study_uids": ["1.2.4"]})
    listed = client.get("/v1/retrievals?limit=5")
    assert listed.status_code == 200
    RetrievalList.model_validate(listed.get_json())
    assert [r["id"] for r in listed.get_json()["retrievals"]] == [
        second.get_json()["id"],
        posted.get_json()["id"],
    ]
    assert client.get("/v1/retrievals?limit=0").status_code == 400


@pytest.mark.integration
def test_pull_prints_each_accession_with_its_outcome(
    orthanc, studies, config, api, tmp_path, monkeypatch
):
    """``covidscan pull --from-file --wait`` against the API over HTTP."""
    from cli.main import main

    add_source(config["DATABASE_URL"], orthanc)
    _client, _owner, app, key = api
    monkeypatch.setenv("COVIDSCAN_API_KEY", key)
    listing = tmp_path / "cohort.csv"
    listing.write_text(f"AccessionNumber\n{KNOWN}\n{UNKNOWN}\n")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = start_gateway(config)
    try:
        result = CliRunner().invoke(
            main,
            [
                "--url",
                f"http://127.0.0.1:{server.port}",
                "pull",
                "--source",
                "pacs",
                "--from-file",
                str(listing),
                "--wait",
                "--poll",
                "0.3",
            ],
            catch_exceptions=False,
        )
    finally:
        stop()
        server.shutdown()
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(KNOWN in line and "retrieved" in line and "3 of 3" in line for line in lines)
    assert any(UNKNOWN in line and "not_found" in line for line in lines)


def test_a_closed_window_is_reported():
    from core.retrievals import describe
    from db.models import Retrieval

    retrieval = Retrieval(id="r1", source="pacs", by="study_uid")
    retrieval.items = [
        RetrievalItem(position=0, status=ScanStatus.QUEUED, outcome=RetrievalOutcome.QUEUED)
    ]
    window = parse_window("22:00-06:00")
    assert describe(retrieval, window, datetime(2026, 1, 1, 12))["status"] == "waiting_window"
    assert describe(retrieval, window, datetime(2026, 1, 1, 23))["status"] == "queued"
    with pytest.raises(ConfigError):
        load_settings({"RETRIEVE_POLL_INTERVAL": "0"})


@pytest.mark.integration
def test_a_cohort_is_retrieved_from_a_dicomweb_source_with_basic_auth(
    tmp_path, config, api, caplog
):
    require_orthanc()
    caplog.set_level(logging.DEBUG)
    password = "pacs-Pa55word-0123"
    with Orthanc(
        tmp_path / "orthanc-web", free_port(), free_port(), users={"pacsadmin": password}
    ) as pacs:
        study_uid, sop_uids = upload_studies(pacs)
        engine = make_engine(config["DATABASE_URL"])
        with make_session_factory(engine).begin() as session:
            spec = dicomweb_spec("web", f"{pacs.url}/dicom-web", basic=f"pacsadmin:{password}")
            register(session, spec, config["PHI_KEY"])
        engine.dispose()
        client, *_ = api
        stop = start_gateway(config)
        try:
            posted = client.post(
                "/v1/retrievals", json={"source": "web", "accession_numbers": [KNOWN, UNKNOWN]}
            )
            assert posted.status_code == 202, posted.get_json()
            done = wait_done(client, posted.get_json()["id"])
        finally:
            stop()
    known, unknown = done["items"]
    assert known["outcome"] == "retrieved", known
    assert (known["instances_retrieved"], known["instances_expected"]) == (3, 3)
    assert known["study_uids"] == [study_uid]
    assert unknown["outcome"] == "not_found"
    with make_session_factory(make_engine(config["DATABASE_URL"]))() as session:
        scans = session.scalars(select(Scan).where(Scan.job_id == known["job_id"])).all()
    assert sorted(s.sop_instance_uid for s in scans) == sorted(sop_uids)
    for accession in (KNOWN, UNKNOWN):
        assert accession not in caplog.text


# The gateway's loop, by hand (no PACS needed)


def gateway_retriever(config: dict[str, str]):
    from core.wakeups import WakeupSender
    from dicomnet.listener import job_service
    from dicomnet.retriever import Retriever

    settings = load_settings(config)
    factory = make_session_factory(make_engine(settings.database_url))
    return Retriever(job_service(settings, factory, WakeupSender(settings.redis_url)))


def queue_study_uids(config: dict[str, str], port: int, uids: list[str]) -> str:
    from core.jobs.service import Actor
    from core.retrievals import request_retrieval

    engine = make_engine(config["DATABASE_URL"])
    try:
        with make_session_factory(engine).begin() as session:
            register(session, dicom_spec("closed", "PACS", "127.0.0.1", port), None)
            retrieval = request_retrieval(
                session, Actor("r", None, "retrieval"), "closed", None, study_uids=uids
            )
            return retrieval.id
    finally:
        engine.dispose()


def answer(config: dict[str, str], retrieval_id: str, window=None, now=None) -> dict:
    from core.retrievals import describe
    from db.jobs import ANY_OWNER
    from db.retrievals import find_retrieval

    with make_session_factory(make_engine(config["DATABASE_URL"]))() as session:
        return describe(find_retrieval(session, retrieval_id, ANY_OWNER), window, now)


@pytest.fixture
def closed_port():
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.mark.integration
def test_outside_its_window_the_gateway_takes_nothing(app_config, closed_port):
    from datetime import timedelta

    later = datetime.now() + timedelta(hours=2)
    window = f"{later:%H:%M}-{later + timedelta(hours=1):%H:%M}"
    retrieval_id = queue_study_uids(app_config, closed_port, ["1.2.3"])
    retriever = gateway_retriever({**app_config, "RETRIEVE_WINDOW": window})
    assert retriever.run_once() is False
    shown = answer(app_config, retrieval_id, parse_window(window))
    assert shown["status"] == "waiting_window" and shown["window"] == window
    assert shown["items"][0]["outcome"] == "queued"


@pytest.mark.integration
def test_an_unreachable_pacs_is_tried_again_then_fails_the_item_with_the_reason(
    app_config, closed_port
):
    retrieval_id = queue_study_uids(app_config, closed_port, ["1.2.3", "1.2.4"])
    retriever = gateway_retriever({**app_config, "MAX_ATTEMPTS": "2", "RETRIEVE_RETRY_BASE": "1"})
    assert retriever.run_once() and retriever.run_once()  # first attempts, both unreachable
    assert not retriever.run_once()  # not due yet
    shown = answer(app_config, retrieval_id)
    assert shown["status"] == "queued"
    assert [item["outcome"] for item in shown["items"]] == ["queued", "queued"]
    assert "connection refused" in shown["items"][0]["reason"]
    assert "trying again" in shown["items"][0]["reason"]
    time.sleep(1.1)  # the first wait: 1 s, jittered down to at least 0.75 s
    assert retriever.run_once() and retriever.run_once() and not retriever.run_once()
    shown = answer(app_config, retrieval_id)
    assert shown["status"] == "done"
    assert [item["outcome"] for item in shown["items"]] == ["failed", "failed"]
    assert "connection refused" in shown["items"][0]["reason"]
    assert "trying again" not in shown["items"][0]["reason"]


@pytest.mark.database
def test_a_dead_gateways_item_is_taken_again_then_failed(database_url, closed_port):
    from db.retrievals import RETRIEVAL_ITEMS

    config = {"DATABASE_URL": database_url}
    retrieval_id = queue_study_uids(config, closed_port, ["1.2.3"])
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    try:
        for attempt in range(1, 4):
            with factory() as session:
                [lease] = RETRIEVAL_ITEMS.claim(session, f"dead-{attempt}", 1, lease_seconds=0)
                assert lease.attempt == attempt
                session.commit()
                time.sleep(0.01)
                expired = RETRIEVAL_ITEMS.expire(session, max_attempts=3)
                session.commit()
            assert (expired.requeued, expired.failed) == ((1, 0) if attempt < 3 else (0, 1))
    finally:
        engine.dispose()
    [item] = answer(config, retrieval_id)["items"]
    assert item["outcome"] == "failed" and "gateway died" in item["reason"]


# covidscan pull, its local side


@pytest.mark.parametrize(
    "text, kind, values",
    [
        ("AccessionNumber\nA1\n\nA2\n", "accession", ["A1", "A2"]),
        ("StudyInstanceUID,Note\n1.2.3,first\n1.2.4,second\n", "study-uid", ["1.2.3", "1.2.4"]),
        ("A1\r\nA2\r\n", None, ["A1", "A2"]),
        ("\ufeffAccession Number\nA1\n", "accession", ["A1"]),
    ],
)
def test_pull_reads_a_list_with_or_without_its_header(tmp_path, text, kind, values):
    from cli.pull import read_list

    path = tmp_path / "list.csv"
    path.write_text(text, encoding="utf-8")
    assert read_list(path) == (kind, values)


def test_pull_refuses_an_empty_list_and_prints_items_by_the_local_identifier(tmp_path):
    import click

    from cli.pull import item_line, read_list

    path = tmp_path / "empty.csv"
    path.write_text("AccessionNumber\n\n")
    with pytest.raises(click.BadParameter, match="holds no identifier"):
        read_list(path)
    line = item_line(
        KNOWN,
        {
            "index": 0,
            "outcome": "retrieved",
            "instances_retrieved": 3,
            "instances_expected": 4,
            "job_id": "j1",
            "reason": "1 instances refused: MR",
        },
    )
    assert line == f"{KNOWN}  retrieved  3 of 4 instances  job j1  (1 instances refused: MR)"
    assert item_line(UNKNOWN, {"outcome": "not_found", "reason": "no study matches"}) == (
        f"{UNKNOWN}  not_found  (no study matches)"
    )


@pytest.mark.database
def test_retention_deletes_ended_retrievals_and_their_sealed_list(database_url, closed_port):
    from datetime import UTC, timedelta

    from db.models import Retrieval
    from db.retrievals import delete_expired_retrievals

    config = {"DATABASE_URL": database_url}
    ended = queue_study_uids(config, closed_port, ["1.2.3"])
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    try:
        with factory.begin() as session:
            waiting = Retrieval(owner="r", source="closed", by="study_uid", study_uids=["1.2.4"])
            waiting.items = [RetrievalItem(position=0)]
            session.add(waiting)
            session.flush()
            waiting_id = waiting.id
            session.get(Retrieval, ended).items[0].status = ScanStatus.SUCCEEDED
        later = datetime.now(UTC) + timedelta(days=31)
        with factory.begin() as session:
            assert delete_expired_retrievals(session, 30 * 86400) == 0  # not old enough
            assert delete_expired_retrievals(session, 0, later) == 0  # kept for ever
            assert delete_expired_retrievals(session, 30 * 86400, later) == 1
        with factory() as session:
            assert session.get(Retrieval, ended) is None
            assert session.get(Retrieval, waiting_id) is not None  # not ended: kept
            assert (
                session.scalars(
                    select(RetrievalItem).where(RetrievalItem.retrieval_id == ended)
                ).all()
                == []
            )
    finally:
        engine.dispose()


@pytest.mark.integration
def test_a_pacs_that_does_not_know_the_gateway_refuses_it_with_a_hint(app_config, tmp_path):
    from core.jobs.service import Actor
    from core.retrievals import request_retrieval

    require_orthanc()
    with Orthanc(tmp_path / "strict", free_port(), free_port()) as pacs:  # no modalities
        add_source(app_config["DATABASE_URL"], pacs, "strict")
        engine = make_engine(app_config["DATABASE_URL"])
        with make_session_factory(engine).begin() as session:
            retrieval_id = request_retrieval(
                session, Actor("r"), "strict", None, study_uids=["1.2.3"]
            ).id
        engine.dispose()
        assert gateway_retriever(app_config).run_once()
    [item] = answer(app_config, retrieval_id)["items"]
    assert item["outcome"] == "refused", item
    assert "aborted the association at the C-FIND" in item["reason"]
    assert "calling AE title COVIDSCAN" in item["reason"]


@pytest.mark.integration
def test_pull_sends_accessions_given_on_the_command_line(config, api, monkeypatch, closed_port):
    from cli.main import main

    engine = make_engine(config["DATABASE_URL"])
    with make_session_factory(engine).begin() as session:
        register(session, dicom_spec("pacs", "PACS", "127.0.0.1", closed_port), None)
    engine.dispose()
    client, _owner, app, key = api
    monkeypatch.setenv("COVIDSCAN_API_KEY", key)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        sent = CliRunner().invoke(
            main, ["--url", url, "pull", "--source", "pacs", "--accession", KNOWN, UNKNOWN]
        )
        unknown = CliRunner().invoke(
            main, ["--url", url, "pull", "--source", "x", "--study-uid", "1.2"]
        )
        nothing = CliRunner().invoke(main, ["--url", url, "pull", "--source", "pacs"])
    finally:
        server.shutdown()
    assert sent.exit_code == 0, sent.output
    first, *items = sent.output.splitlines()
    assert first.startswith("retrieval ") and first.endswith(": 2 items from pacs")
    assert items == [f"{KNOWN}  queued", f"{UNKNOWN}  queued"]
    retrieval_id = first.split()[1].rstrip(":")
    shown = client.get(f"/v1/retrievals/{retrieval_id}").get_json()
    assert shown["by"] == "accession_number" and len(shown["items"]) == 2
    assert unknown.exit_code == 1 and "no destination named 'x'" in unknown.output
    assert nothing.exit_code == 2 and "give identifiers" in nothing.output
