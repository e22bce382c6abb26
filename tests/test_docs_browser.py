"""/docs in a real headless Chromium over real HTTP (real Redis and database, no worker):
Swagger UI renders the document from this site alone, under the pages' Content-Security-
Policy, and calls the API with a key given to its Authorize dialog."""

from __future__ import annotations

import pytest

from tests.browser import LiveServer, chromium, require_chromium
from tests.test_web_browser import wait_until

pytestmark = pytest.mark.integration

LIST_JOBS = "operations-jobs-jobs_list_jobs"  # Swagger UI's id: tag, then operationId


def test_the_docs_page_lists_every_operation_and_tries_one_with_a_key(app, api_key, tmp_path):
    require_chromium()
    operations = sum(
        len(item) for item in app.test_client().get("/openapi.json").get_json()["paths"].values()
    )
    with LiveServer(app) as server, chromium(tmp_path) as driver:
        driver.get(server.url + "/docs")
        css = lambda selector: driver.find_elements("css selector", selector)  # noqa: E731
        wait_until(driver, lambda d: len(css(".opblock")) == operations, 30, "every operation")
        css("button.authorize")[0].click()
        wait_until(driver, lambda d: css(".auth-container input"), 10, "the key's field")
        css(".auth-container input")[0].send_keys(api_key)
        css(".auth-container button.authorize")[0].click()
        css("button.btn-done")[0].click()
        css(f"#{LIST_JOBS} .opblock-summary-control")[0].click()
        wait_until(driver, lambda d: css(f"#{LIST_JOBS} .try-out__btn"), 10, "Try it out")
        css(f"#{LIST_JOBS} .try-out__btn")[0].click()
        css(f"#{LIST_JOBS} .execute")[0].click()
        status = f"#{LIST_JOBS} .live-responses-table tbody .response-col_status"
        wait_until(driver, lambda d: css(status), 20, "the response")
        assert css(status)[0].text.strip() == "200"
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors  # no script or style refused, nothing fetched elsewhere
