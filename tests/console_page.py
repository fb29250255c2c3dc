"""The console in Debian's Chromium, driven by Selenium through chromedriver:
the browser (headless, this machine's flags) and a page helper that waits,
finds, signs in and takes screenshots into tests/artifacts/console/.
Used by tests/test_console_browser.py and, on the lab, tests/test_cluster_console.py."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from .chromium import CHROMEDRIVER, FLAGS, chromium_binary

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
WAIT = 30


@contextmanager
def selenium_chromium(profile: Path, downloads: Path | None = None) -> Iterator[WebDriver]:
    """Debian's Chromium, headless, with the flags this machine's closed network
    needs, its console log kept, and downloads (when given) into `downloads`."""
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary()
    for flag in (*FLAGS, "--window-size=1360,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if downloads is not None:
        options.add_experimental_option(
            "prefs",
            {"download.default_directory": str(downloads), "download.prompt_for_download": False},
        )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The console in the browser: waits, finds and screenshots."""

    def __init__(self, driver: WebDriver, url: str) -> None:
        self.driver = driver
        self.url = url
        self.shots: set[str] = set()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def until(self, what: Callable[[], Any], message: str, timeout: float = WAIT) -> Any:
        def check(_: Any) -> Any:
            try:
                return what()
            except WebDriverException:
                return None

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(check)
        except Exception:
            self.driver.save_screenshot(str(ARTIFACTS / f"failed-{secrets.token_hex(2)}.png"))
            raise AssertionError(f"{message}; page error: {self.text('error-text')!r}") from None

    def click(self, css: str) -> None:
        """Click what `css` finds, found afresh (lists are redrawn as they refresh)."""

        def attempt() -> bool:
            self.find(css).click()
            return True

        self.until(attempt, f"cannot click {css}")

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, element_id: str) -> str:
        try:
            return str(self.driver.find_element(By.ID, element_id).text)
        except WebDriverException:
            return ""

    def visible(self, css: str) -> WebElement | None:
        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found and found[0].is_displayed() else None

    def go(self, hash_: str, page: str) -> None:
        self.driver.execute_script("location.hash = arguments[0]", hash_)
        self.until(lambda: self.visible(f"#page-{page}"), f"the {page} page did not show")

    def open_signed_in(self, token: str) -> None:
        """The console, fresh, signed in with `token`."""
        self.driver.get(self.url + "/console/")
        self.until(lambda: self.visible("#signin-form"), "no sign-in form")
        self.sign_in(token)

    def sign_in(self, token: str) -> None:
        field = self.find("#signin-token")
        field.clear()
        field.send_keys(token)
        self.find("#signin-form button[type=submit]").click()
        self.until(lambda: self.visible("#page-daemons"), "the daemons page did not show")

    def shot(self, name: str) -> None:
        assert self.driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
        self.shots.add(name)
