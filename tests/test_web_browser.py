"""The web page in a real headless Chromium, against the real API over HTTP, a real
Redis and a real Celery worker: upload, watch, filter, download."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import time
from pathlib import Path

import pytest
import requests

from tests.browser import LiveServer, chromium, require_chromium, screenshot
from tests.images import png_bytes, write_folder, zip_bytes

pytestmark = pytest.mark.integration

TIMEOUT = 120


@pytest.fixture(autouse=True)
def _needs_chromium():
    """Checked before the worker starts, so a missing browser costs nothing."""
    require_chromium()


@pytest.fixture
def live_server(stack_config, worker):
    from api import create_app

    with LiveServer(create_app(stack_config)) as server:
        yield server


@pytest.fixture
def browser(tmp_path, live_server, stack_key):
    """A Chromium signed in to the live server with the session's key."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with chromium(downloads) as driver:
        driver.downloads = downloads
        sign_in(driver, live_server.url, stack_key)
        yield driver


def sign_in(driver, base_url: str, key: str) -> None:
    """Through the sign-in form, as a person would: the page asks for the key once."""
    driver.get(base_url + "/")
    wait_until(driver, lambda d: "/login" in d.current_url, 10, "the sign-in page")
    by_id(driver, "api-key").send_keys(key)
    by_id(driver, "sign-in").click()
    wait_until(driver, lambda d: d.find_elements("id", "upload-form"), 10, "the upload page")


def wait_until(driver, condition, timeout: float = TIMEOUT, what: str = "condition"):
    """Poll ``condition``; an element the page re-rendered between finding and reading it
    (stale) counts as not yet, like one not found."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.2,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(lambda d: condition(d), message=f"timed out waiting for {what}")


def by_id(driver, element_id: str):
    return driver.find_element("id", element_id)


def table_rows(driver) -> list[dict[str, str]]:
    """The visible results table, one dict per row keyed by column label."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('#results tbody tr')).map((tr) => {
          const row = {};
          tr.querySelectorAll('td').forEach((td) => {
            row[td.dataset.label] = td.textContent.trim();
          });
          const img = tr.querySelector('img');
          row.thumbnailWidth = img && img.complete ? img.naturalWidth : 0;
          return row;
        });""")


def upload_through_the_page(driver, base_url: str, paths: list[Path], name: str) -> str:
    driver.get(base_url + "/")
    by_id(driver, "files").send_keys("\n".join(str(p) for p in paths))
    wait_until(
        driver,
        lambda d: f"{len(paths)} files" in by_id(d, "selection-summary").text,
        10,
        "the selection summary",
    )
    by_id(driver, "job-name").send_keys(name)
    by_id(driver, "submit").click()
    wait_until(driver, lambda d: "/jobs/" in d.current_url, 30, "the job page")
    return driver.current_url.rsplit("/", 1)[1]


def keyboard_order(driver, presses: int = 8) -> list[str]:
    """The ids of the elements Tab reaches, from the top of the main content."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.execute_script(
        "document.activeElement.blur(); document.getElementById('main')"
        ".setAttribute('tabindex', '-1'); document.getElementById('main').focus();"
    )
    order = []
    for _ in range(presses):
        ActionChains(driver).send_keys(Keys.TAB).perform()  # as a person presses it
        order.append(driver.switch_to.active_element.get_attribute("id"))
    return [element_id for element_id in order if element_id]


def wait_for_download(folder: Path, filename: str) -> Path:
    path = folder / filename
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists() and not list(folder.glob("*.crdownload")):
            return path
        time.sleep(0.2)
    raise AssertionError(f"{filename} was not downloaded; found {list(folder.iterdir())}")


def test_upload_watch_filter_and_download_in_chromium(live_server, browser, stack_key, tmp_path):
    paths = write_folder(tmp_path / "slices", 10, size=96, corrupt=1)
    screenshot(browser, "upload-page", tmp_path)
    job_id = upload_through_the_page(browser, live_server.url, paths, "browser e2e")

    wait_until(
        browser,
        lambda d: by_id(d, "job-percent").text.startswith("100%"),
        what="the progress to reach 100%",
    )
    wait_until(browser, lambda d: len(table_rows(d)) == 11, what="11 result rows")
    assert by_id(browser, "count-succeeded").text == "10"
    assert by_id(browser, "count-failed").text == "1"
    assert by_id(browser, "job-status").text == "partially succeeded"
    assert by_id(browser, "time-left").text == "none: finished"
    assert "Research use only" in by_id(browser, "research-notice").text
    assert not by_id(browser, "untrained-banner").is_displayed()  # the tiny model is trained

    api = {
        r["filename"]: r
        for r in requests.get(
            f"{live_server.url}/v1/jobs/{job_id}/results?limit=1000",
            timeout=10,
            headers={"Authorization": f"Bearer {stack_key}"},
        ).json()["results"]
    }
    probabilities = {
        name: r["probability_covid"] for name, r in api.items() if r["status"] == "succeeded"
    }
    assert sorted(probabilities) == sorted(p.name for p in paths[:10])
    rows = table_rows(browser)
    good = [r for r in rows if r["Status"] == "succeeded"]
    assert {r["File"]: float(r["P(COVID)"]) for r in good} == pytest.approx(probabilities, abs=5e-4)
    (bad,) = [r for r in rows if r["Status"] == "failed"]
    assert bad["File"] == "corrupt_0.png" and bad["P(COVID)"] == "–"
    assert bad["Error"] == api["corrupt_0.png"]["error"] and "truncated or corrupt" in bad["Error"]
    wait_until(
        browser,
        lambda d: all(r["thumbnailWidth"] > 0 for r in table_rows(d)),
        30,
        "every thumbnail (and the placeholder) to load",
    )

    by_id(browser, "filter-failed").click()
    assert [r["File"] for r in table_rows(browser)] == ["corrupt_0.png"]
    by_id(browser, "filter-failed").click()

    by_id(browser, "sort").send_keys("P(COVID), highest first")
    ordered = [r["File"] for r in table_rows(browser) if r["Status"] == "succeeded"]
    assert ordered == sorted(probabilities, key=probabilities.get, reverse=True)

    threshold = sorted(probabilities.values())[5]
    by_id(browser, "filter-threshold").send_keys(repr(threshold))
    assert {r["File"] for r in table_rows(browser)} == {
        name for name, p in probabilities.items() if p > threshold
    }
    by_id(browser, "filter-threshold").clear()

    by_id(browser, "download-csv").click()
    csv_path = wait_for_download(browser.downloads, f"covidscan-{job_id}.csv")
    records = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert len(records) == 11
    assert {
        r["filename"]: float(r["probability_covid"]) for r in records if r["status"] == "succeeded"
    } == probabilities
    (failed_record,) = [r for r in records if r["status"] == "failed"]
    assert failed_record["filename"] == "corrupt_0.png" and failed_record["probability_covid"] == ""
    assert failed_record["error"] == api["corrupt_0.png"]["error"]

    by_id(browser, "download-json").click()
    document = json.loads(
        wait_for_download(browser.downloads, f"covidscan-{job_id}.json").read_text()
    )
    assert document["job"]["id"] == job_id and document["job"]["counts"]["failed"] == 1
    assert {r["filename"]: r["error"] for r in document["results"]} == {
        name: r["error"] for name, r in api.items()
    }

    browser.execute_script("window.scrollTo(0, 0)")
    print(f"job page screenshot: {screenshot(browser, 'job-page', tmp_path)}")


def test_a_refused_file_is_listed_with_the_reason_and_can_be_left_out(
    live_server, browser, tmp_path
):
    from selenium.webdriver.common.keys import Keys

    paths = write_folder(tmp_path / "slices", 2, size=64)
    notes = tmp_path / "slices" / "notes.png"
    notes.write_text("not an image at all")
    browser.get(live_server.url + "/")
    unlabelled = browser.execute_script(
        "return Array.from(document.querySelectorAll('input, select'))"
        ".filter((e) => e.labels.length === 0).map((e) => e.id);"
    )
    assert unlabelled == []
    by_id(browser, "files").send_keys("\n".join(str(p) for p in [*paths, notes]))
    assert keyboard_order(browser)[:4] == ["files", "folder", "clear", "job-name"]
    by_id(browser, "submit").send_keys(Keys.ENTER)
    wait_until(browser, lambda d: by_id(d, "upload-error").is_displayed(), 30, "the refusal")
    rejected = by_id(browser, "rejected").text
    assert "notes.png" in rejected and "neither a PNG, a JPEG, a DICOM file nor a ZIP" in rejected
    assert "nothing was stored" in by_id(browser, "upload-error-text").text

    by_id(browser, "drop-rejected").click()
    wait_until(browser, lambda d: "/jobs/" in d.current_url, 30, "the job page")
    wait_until(
        browser, lambda d: by_id(d, "job-percent").text.startswith("100%"), what="the job to finish"
    )
    assert by_id(browser, "count-total").text == "2"


def test_the_job_page_fits_a_phone_screen(live_server, stack_key, tmp_path):
    paths = write_folder(tmp_path / "slices", 2, size=64, corrupt=1)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with chromium(downloads, width=390, height=844) as phone:
        sign_in(phone, live_server.url, stack_key)
        upload_through_the_page(phone, live_server.url, paths, "phone")
        wait_until(phone, lambda d: len(table_rows(d)) == 3, what="3 result rows")
        overflow = phone.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
        )
        assert overflow <= 0
        assert by_id(phone, "download-csv").is_displayed()


def test_a_folder_a_zip_and_a_dropped_file_make_one_job(live_server, browser, tmp_path):
    folder = tmp_path / "study"
    write_folder(folder / "series1", 2, size=64)
    (folder / "notes.txt").write_text("a note beside the slices")
    (folder / "more.zip").write_bytes(
        zip_bytes([("s/extra.png", png_bytes(48, seed=7)), ("s/readme.txt", b"hello")])
    )
    browser.get(live_server.url + "/")
    by_id(browser, "folder").send_keys(str(folder))
    wait_until(
        browser,
        lambda d: "3 files" in by_id(d, "selection-summary").text,
        10,
        "the folder's PNG and ZIP files",
    )
    assert "notes.txt" in by_id(browser, "left-out").text
    browser.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
        document.getElementById('drop-zone').dispatchEvent(
            new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));""",
        base64.b64encode(png_bytes(40, seed=8)).decode(),
    )
    wait_until(
        browser, lambda d: "4 files" in by_id(d, "selection-summary").text, 10, "the dropped file"
    )
    by_id(browser, "submit").click()
    wait_until(browser, lambda d: "/jobs/" in d.current_url, 30, "the job page")
    wait_until(browser, lambda d: len(table_rows(d)) == 4, what="4 result rows")
    assert sorted(r["File"] for r in table_rows(browser)) == [
        "dropped.png",
        "s/extra.png",
        "study/series1/slice_000.png",
        "study/series1/slice_001.png",
    ]
    skipped = by_id(browser, "skipped-list").text
    assert "readme.txt" in skipped and "not a PNG, JPEG or DICOM image" in skipped


def test_the_upload_shows_its_progress_in_bytes(live_server, browser, tmp_path):
    paths = write_folder(tmp_path / "slices", 8, size=256)
    total = sum(p.stat().st_size for p in paths)
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": total // 3},
    )  # about three seconds of upload
    browser.get(live_server.url + "/")
    by_id(browser, "files").send_keys("\n".join(str(p) for p in paths))
    by_id(browser, "submit").click()
    seen = set()
    while "/jobs/" not in browser.current_url:
        # The page may navigate to the job between the URL check and this read.
        text = browser.execute_script(
            "const el = document.getElementById('upload-bytes'); return el ? el.textContent : ''"
        )
        if text.endswith(" sent"):  # "120.5 KiB of 400.2 KiB sent"
            seen.add(text)
        time.sleep(0.05)
    sent = sorted(float(text.split()[0]) for text in seen if text.endswith(" KiB sent"))
    assert len(sent) >= 3, seen  # several steps between nothing and everything
    # The request's total is the files plus the multipart framing around them.
    assert all(re.fullmatch(r"[\d.]+ (B|KiB) of [\d.]+ KiB sent", text) for text in seen), seen
    assert min(float(text.split(" of ")[1].split()[0]) for text in seen) >= total // 1024
    assert sent[0] < sent[-1]


def test_a_wrong_key_is_refused_and_signing_out_ends_the_session(
    live_server, browser, stack_key, tmp_path
):
    from selenium.webdriver.common.keys import Keys

    cookie = browser.get_cookie("covidscan_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    by_id(browser, "sign-out").click()
    wait_until(browser, lambda d: "/login" in d.current_url, 10, "the sign-in page")
    browser.get(live_server.url + "/jobs")
    assert "/login?next=/jobs" in browser.current_url  # the old cookie no longer opens pages
    by_id(browser, "api-key").send_keys(stack_key[:-2] + "xx", Keys.ENTER)
    wait_until(browser, lambda d: d.find_elements("id", "login-error"), 10, "the refusal")
    assert "not valid" in by_id(browser, "login-error").text
    by_id(browser, "api-key").send_keys(stack_key, Keys.ENTER)
    wait_until(browser, lambda d: d.current_url.endswith("/jobs"), 10, "the jobs page it asked for")


def test_the_cancel_button_cancels_a_waiting_job(app, api_key, tmp_path):
    """An API whose database no worker serves: the job waits until the button cancels it."""
    auth = {"Authorization": f"Bearer {api_key}"}
    with LiveServer(app) as server, chromium(tmp_path) as driver:
        response = requests.post(
            f"{server.url}/v1/jobs",
            files=[("files", (f"w{i}.png", png_bytes(32, seed=i), "image/png")) for i in range(3)],
            headers=auth,
            timeout=30,
        )
        assert response.status_code == 202
        job_id = response.json()["id"]
        sign_in(driver, server.url, api_key)
        driver.get(f"{server.url}/jobs/{job_id}")
        button = wait_until(
            driver,
            lambda d: by_id(d, "cancel-job").is_displayed() and by_id(d, "cancel-job"),
            what="the cancel button",
        )
        button.click()
        wait_until(
            driver,
            lambda d: by_id(d, "job-status").text == "cancelled",
            what="the job to show cancelled",
        )
        assert by_id(driver, "count-cancelled").text == "3"
        assert not by_id(driver, "cancel-job").is_displayed()
        assert (
            requests.get(f"{server.url}/v1/jobs/{job_id}", headers=auth, timeout=30).json()[
                "status"
            ]
            == "cancelled"
        )


def heatmap_state(driver) -> dict:
    return driver.execute_script("""
        const img = document.querySelector('#results tbody tr .heatmap-thumb');
        const dialog = document.getElementById('heatmap-viewer');
        const slice = document.getElementById('viewer-slice');
        return {thumb: img && img.complete ? img.naturalWidth : 0, open: dialog.open,
                slice: slice.complete ? slice.naturalWidth : 0,
                opacity: document.getElementById('viewer-heatmap').style.opacity,
                notes: Array.from(document.querySelectorAll('.untrained-note'))
                  .map((n) => n.textContent)};""")


def test_a_heatmap_is_asked_for_from_its_row_and_shown_in_the_viewer(
    live_server, browser, stack_key, tiny_model_path, tmp_path
):
    from tests.test_explanations import last_conv_layer

    response = requests.post(
        f"{live_server.url}/v1/jobs",
        files=[("files", (f"h{i}.png", png_bytes(64, seed=i), "image/png")) for i in range(2)],
        headers={"Authorization": f"Bearer {stack_key}"},
        timeout=30,
    )
    job_id = response.json()["id"]
    browser.get(f"{live_server.url}/jobs/{job_id}")
    wait_until(
        browser,
        lambda d: [r["Status"] for r in table_rows(d)] == ["succeeded"] * 2,
        what="two classified rows",
    )
    browser.find_element("css selector", "#results tbody tr .heatmap-toggle").click()
    wait_until(browser, lambda d: heatmap_state(d)["thumb"] > 0, what="the row's heatmap")
    browser.find_element("css selector", "#results tbody tr .heatmap-thumb").click()
    wait_until(
        browser,
        lambda d: heatmap_state(d)["open"] and heatmap_state(d)["slice"] == 32,
        30,
        "the viewer with the slice as the model saw it",
    )
    browser.execute_script(
        "const s = document.getElementById('viewer-opacity');"
        "s.value = 20; s.dispatchEvent(new Event('input'));"
    )
    assert heatmap_state(browser)["opacity"] == "0.2"
    screenshot(browser, "heatmap-viewer", tmp_path)
    assert f"layer {last_conv_layer(tiny_model_path)} " in by_id(browser, "viewer-meta").text
    assert not by_id(browser, "viewer-untrained").is_displayed()  # the tiny model is trained
    assert by_id(browser, "viewer-next").get_attribute("disabled")  # the other row: not asked
    by_id(browser, "viewer-close").click()
    browser.find_element("css selector", "#results tbody tr .heatmap-toggle").click()
    assert heatmap_state(browser)["thumb"] == 0


def test_a_heatmap_of_the_untrained_default_says_so(app, api_key, database_url, tmp_path):
    """No worker process: the task body runs here, with the untrained default's Grad-CAM."""
    from models.gradcam import GradCam
    from models.loader import build_untrained
    from tests.test_explain_drain import make_runtime
    from worker.drain import drain

    with LiveServer(app) as server, chromium(tmp_path) as driver:
        response = requests.post(
            f"{server.url}/v1/jobs",
            data={"explain": "gradcam"},
            files=[("files", ("u.png", png_bytes(64, seed=1), "image/png"))],
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
        )
        job_id = response.json()["id"]
        runtime = make_runtime(
            database_url, tmp_path, lambda _engine: GradCam(build_untrained((64, 64)), 1)
        )
        try:
            assert drain(runtime).explained == 1
        finally:
            runtime.close()
        sign_in(driver, server.url, api_key)
        driver.get(f"{server.url}/jobs/{job_id}")
        toggle = wait_until(
            driver,
            lambda d: d.find_elements("css selector", "#results tbody tr .heatmap-toggle"),
            what="the row",
        )[0]
        toggle.click()
        wait_until(driver, lambda d: heatmap_state(d)["thumb"] > 0, what="the row's heatmap")
        assert heatmap_state(driver)["notes"] == ["untrained model: means nothing"]
        driver.find_element("css selector", "#results tbody tr .heatmap-thumb").click()
        wait_until(
            driver,
            lambda d: by_id(d, "viewer-untrained").is_displayed(),
            30,
            "the viewer's untrained warning",
        )
        assert "this heatmap means nothing" in by_id(driver, "viewer-untrained").text


def test_a_dicom_folder_shows_its_series_with_a_strip_chart(
    live_server, browser, stack_key, tmp_path
):
    from tests import dicom_files as d

    folder = tmp_path / "PACS" / "SE1"
    folder.mkdir(parents=True)
    files, _ = d.ct_series(6, seed=3)
    paths = []
    for index, body in enumerate(files):  # PACS exports: no extension
        paths.append(folder / f"IM{index:04d}")
        paths[-1].write_bytes(body)
    job_id = upload_through_the_page(browser, live_server.url, paths, "dicom")
    wait_until(browser, lambda d: by_id(d, "job-status").text in ("succeeded",), what="the job")
    wait_until(browser, lambda d: by_id(d, "series-panel").is_displayed(), 20, "the series view")
    wait_until(
        browser,
        lambda d: "%" in d.find_element("css selector", "#series tbody tr td:nth-child(4)").text,
        20,
        "the series result",
    )
    bars = browser.execute_script("""
        return Array.from(document.querySelectorAll('#series .strip-chart rect')).map(
          (r) => r.querySelector('title').textContent);""")
    assert len(bars) == 6
    positions = [float(re.search(r"position (-?[\d.]+) mm", b).group(1)) for b in bars]
    assert positions == sorted(positions)  # feet to head, whatever the upload order
    body = requests.get(
        f"{live_server.url}/v1/jobs/{job_id}/series",
        headers={"Authorization": f"Bearer {stack_key}"},
        timeout=10,
    ).json()
    [series] = body["series"]
    shown = browser.execute_script(  # in one step: the page may re-render the table meanwhile
        "return document.querySelector('#series tbody tr td:nth-child(4)').textContent"
    )
    assert shown.strip() == f"{100 * series['probability_covid']:.1f}%"
    assert "Doe" not in browser.page_source and d.PATIENT_ID not in browser.page_source
    browser.execute_script("document.getElementById('series-panel').scrollIntoView()")
    screenshot(browser, "series-strip-chart", tmp_path)


def test_a_large_selection_goes_in_parts_as_one_job_or_not_at_all(
    live_server, browser, stack_config, stack_key, tmp_path
):
    """70 files: parts of 64 and 6 files, one job, sealed; a refused file in the second part
    deletes the job, so nothing of that upload is kept."""
    from sqlalchemy import select

    from db.models import AuditEvent
    from db.session import make_engine, make_session_factory

    paths = write_folder(tmp_path / "many", 70, size=32)
    job_id = upload_through_the_page(browser, live_server.url, paths, "in parts")
    wait_until(
        browser, lambda d: by_id(d, "job-percent").text.startswith("100%"), what="the job to finish"
    )
    assert by_id(browser, "count-total").text == "70"
    engine = make_engine(stack_config["DATABASE_URL"])
    try:
        with make_session_factory(engine)() as session:
            actions = list(
                session.scalars(
                    select(AuditEvent.action)
                    .where(AuditEvent.job_id == job_id)
                    .order_by(AuditEvent.id)
                )
            )
    finally:
        engine.dispose()
    assert actions[:3] == ["job.submit", "job.add_scans", "job.seal"]

    notes = tmp_path / "many" / "zz_notes.png"  # sorted last: in the second part
    notes.write_text("not an image at all")
    browser.get(live_server.url + "/")
    by_id(browser, "files").send_keys("\n".join(str(p) for p in sorted([*paths, notes])))
    by_id(browser, "submit").click()
    wait_until(browser, lambda d: by_id(d, "upload-error").is_displayed(), 60, "the refusal")
    assert "zz_notes.png" in by_id(browser, "rejected").text
    assert "nothing was stored" in by_id(browser, "upload-error-text").text
    with make_session_factory(engine)() as session:
        opened = [
            job
            for job, detail in session.execute(
                select(AuditEvent.job_id, AuditEvent.detail)
                .where(AuditEvent.action == "job.submit")
                .order_by(AuditEvent.id)
            )
            if (detail or {}).get("open")
        ]
        deleted = set(
            session.scalars(select(AuditEvent.job_id).where(AuditEvent.action == "job.delete"))
        )
    engine.dispose()
    assert opened[-1] != job_id and opened[-1] in deleted  # the refused upload's job is gone

    # A server that cannot delete the job: the page says what was kept, not "nothing".
    browser.get(live_server.url + "/")
    browser.execute_script("""
        const realFetch = window.fetch;
        window.fetch = (url, options) => (options && options.method === "DELETE") ?
          Promise.resolve(new Response("{}", { status: 503 })) : realFetch(url, options);""")
    by_id(browser, "files").send_keys("\n".join(str(p) for p in sorted([*paths, notes])))
    by_id(browser, "submit").click()
    wait_until(browser, lambda d: by_id(d, "upload-error").is_displayed(), 60, "the refusal")
    said = by_id(browser, "upload-error-text").text
    assert "nothing was stored" not in said and "could not be deleted" in said
    kept = re.search(r"kept as job ([0-9a-f]{32})", said).group(1)
    assert f"covidscan delete {kept}" in said
    headers = {"Authorization": f"Bearer {stack_key}"}
    job = requests.get(f"{live_server.url}/v1/jobs/{kept}", headers=headers, timeout=10).json()
    assert job["counts"]["total"] == 64  # the first part, as the page says
    assert (
        requests.delete(
            f"{live_server.url}/v1/jobs/{kept}", headers=headers, timeout=10
        ).status_code
        == 204
    )


def test_a_series_still_receiving_says_so_on_the_page(live_server, browser, stack_key):
    """An open job's series may grow (a C-STORE job waits for its series to be complete):
    the page says "receiving" until the job is sealed."""
    from tests import dicom_files as d

    files, _ = d.ct_series(3, seed=9)
    headers = {"Authorization": f"Bearer {stack_key}"}
    response = requests.post(
        f"{live_server.url}/v1/jobs",
        data={"open": "true"},
        files=[("files", (f"IM{i}", body, "application/dicom")) for i, body in enumerate(files)],
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    browser.get(f"{live_server.url}/jobs/{job_id}")
    label = "#series tbody tr td:nth-child(5)"
    wait_until(
        browser,
        lambda d: "receiving" in d.find_element("css selector", label).text,
        20,
        "the series shown as receiving",
    )
    sealed = requests.post(f"{live_server.url}/v1/jobs/{job_id}/seal", headers=headers, timeout=10)
    assert sealed.status_code == 200, sealed.text
    wait_until(
        browser,
        lambda d: "receiving" not in d.find_element("css selector", label).text,
        20,
        "the series no longer receiving",
    )


def test_the_job_page_shows_each_delivery_to_a_pacs(live_server, browser, stack_key, stack_config):
    """A job sent to a destination lists its delivery: pending once the job ended, then
    failed with the reason (here: no PHI_KEY is set, so no patient attributes can be put
    back and the PACS could not file it)."""
    import uuid

    from core.destinations import dicom_spec, register
    from covidscan.settings import load_settings
    from db.blobs import open_blob_store
    from db.session import make_engine, make_session_factory
    from dicomnet.exporter import send_due
    from tests import dicom_files as d
    from tests.conftest import wait_for_job

    name = f"page-pacs-{uuid.uuid4().hex[:6]}"
    settings = load_settings(stack_config)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    with factory.begin() as session:
        register(session, dicom_spec(name, "PACS", "127.0.0.1", 104, commitment=False), None)
    files, _ = d.ct_series(2, seed=4)
    headers = {"Authorization": f"Bearer {stack_key}"}
    response = requests.post(
        f"{live_server.url}/v1/jobs",
        data={"export_to": name},
        files=[("files", (f"IM{i}", body, "application/dicom")) for i, body in enumerate(files)],
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    wait_for_job(lambda_client(live_server.url, headers), job_id)
    browser.get(f"{live_server.url}/jobs/{job_id}")
    state = "#exports tbody tr td:nth-child(3)"
    wait_until(
        browser, lambda d: d.find_element("css selector", state).text == "pending", 20, "pending"
    )
    assert browser.find_element("css selector", "#exports tbody tr td").text == name
    send_due(settings, factory, open_blob_store(settings.blob_dir, settings.blob_store))
    engine.dispose()
    wait_until(
        browser, lambda d: d.find_element("css selector", state).text == "failed", 20, "failed"
    )
    error = browser.find_element("css selector", "#exports tbody tr td:nth-child(6)").text
    assert "patient attributes" in error and "PHI_KEY" in error


class lambda_client:
    """Enough of a client for :func:`tests.conftest.wait_for_job`: ``job(id)`` over HTTP."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url, self.headers = url, headers

    def job(self, job_id: str) -> dict:
        return requests.get(f"{self.url}/v1/jobs/{job_id}", headers=self.headers, timeout=10).json()
