"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) and a real HTTP
server for browser tests. Nothing is downloaded: Selenium is pointed at the installed
driver and browser, so Selenium Manager never runs."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from werkzeug.serving import make_server

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def require_chromium() -> None:
    """Skip when the browser is missing; in CI (CI=true) fail instead, so it is never silent."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if not missing:
        return
    reason = (
        f"browser test needs {', '.join(missing)}: "
        "apt-get install chromium chromium-driver; pip install -r requirements.txt"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def chromium(download_dir: Path, width: int = 1280, height: int = 1000) -> Iterator[WebDriver]:
    """A headless Chromium with a fresh profile that saves downloads into ``download_dir``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(download_dir), "download.prompt_for_download": False},
    )
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(
            service=Service(executable_path=str(CHROMEDRIVER)), options=options
        )
        try:
            driver.execute_cdp_cmd(
                "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)}
            )
            yield driver
        finally:
            driver.quit()


def screenshot(driver: WebDriver, name: str, tmp_path: Path) -> Path:
    """A PNG of what the browser shows: into docs/images/ with ``DOCS_SCREENSHOTS=1`` (``make
    screenshots``, so the docs' pictures are the page as the tests drive it), else into tmp_path."""
    folder = DOCS_IMAGES if os.environ.get("DOCS_SCREENSHOTS") == "1" else tmp_path
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return path


class LiveServer:
    """The WSGI app served over real HTTP on a free port, in a background thread."""

    def __init__(self, app) -> None:
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._thread.join(10)
