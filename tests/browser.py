"""A real browser for the console's tests: Debian's headless chromium, driven by selenium.

:func:`open_browser` starts ``/usr/bin/chromium`` through ``/usr/bin/chromedriver``
(installed by ``provisioning/dev.sh test`` like mosquitto; the tests skip,
saying so, only when chromium is missing), headless, as root (``--no-sandbox``), with
nothing that reaches out to the internet, and a fresh profile under the test's
temporary directory. :class:`Browser` adds what the tests need on top of
selenium's driver:

* bounded waits (:meth:`Browser.until`, :meth:`Browser.element`): every wait has
  a deadline and says what it waited for when it fails; never a sleep;
* the browser's console log (:meth:`Browser.errors`): a Content-Security-Policy
  violation, a script error or an asset that failed to load shows there, so a
  test asserts that none did;
* screenshots at a given width (:meth:`Browser.screenshot`), written under
  :func:`screenshot_dir`: ``$APPLIANCE_SCREENSHOTS`` when set (to keep them after
  the run), else the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS_ENV = "APPLIANCE_SCREENSHOTS"
PHONE, DESKTOP = 360, 1280
"""The two widths every page is looked at: a phone held upright, and a laptop."""
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--disable-extensions", "--no-default-browser-check")
WAIT_S = 10.0
_TOO_WIDE = """
const root = document.documentElement;
if (root.scrollWidth <= root.clientWidth) return [];
const clipped = (el) => {  // inside a box that scrolls or clips it: the page does not widen
  for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
    if (getComputedStyle(up).overflowX !== "visible") return true;
  }
  return false;
};
const found = [];
for (const el of document.body.querySelectorAll("*")) {
  const box = el.getBoundingClientRect();
  if (box.right > root.clientWidth + 1 && !found.some((outer) => outer.contains(el))
      && !clipped(el)) {
    found.push(el);
  }
}
const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
  + [...el.classList].map((c) => "." + c).join("");
const right = (el) => Math.round(el.getBoundingClientRect().right);
return found.slice(0, 5).map((el) => `${name(el)} (${right(el)} px)`);
"""
T = TypeVar("T")


def require_chromium() -> None:
    """Skip the calling test, with the reason, when the machine has no chromium.

    Only then: chromium without its driver is a broken setup, and fails.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium and chromium-driver "
                    "(provisioning/dev.sh test does)")


def screenshot_dir(tmp: Path) -> Path:
    """Where screenshots go: ``$APPLIANCE_SCREENSHOTS`` if set, else ``tmp/screenshots``."""
    chosen = os.environ.get(SHOTS_ENV)
    directory = Path(chosen) if chosen else tmp / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


_UNLABELLED = """
return [...document.querySelectorAll('input, select, textarea, button')]
  .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length)
          && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby')
          && !(e.tagName === 'BUTTON' && e.textContent.trim()))
  .map(e => e.outerHTML.slice(0, 120));
"""


class Browser:
    """One headless chromium with a fresh profile; close it with :meth:`close`."""

    def __init__(self, profile: Path, shots: Path, width: int = DESKTOP) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},900")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.driver.set_page_load_timeout(30)
        self.driver.set_script_timeout(30)
        self.shots = shots

    # --- pages and elements ---------------------------------------------------------------

    def open(self, url: str) -> None:
        """Load ``url`` and wait until its document (and deferred scripts) ran."""
        self.driver.get(url)
        self.until(lambda d: d.execute_script("return document.readyState") == "complete",
                   f"{url} to load")

    def until(self, condition: Callable[[Any], T], what: str, timeout: float = WAIT_S) -> T:
        """Wait until ``condition(driver)`` is truthy (at most ``timeout`` s) and return it."""
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
            TimeoutException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        passing = (NoSuchElementException, StaleElementReferenceException)
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05,
                                 ignored_exceptions=passing).until(condition)
        except TimeoutException:
            raise AssertionError(f"no {what} after {timeout:g} s (at {self.driver.current_url}); "
                                 f"browser log: {self.drain()[-5:]}") from None

    def element(self, css: str, timeout: float = WAIT_S, visible: bool = True) -> Any:
        """The first element matching ``css``, waiting until it exists (and is displayed)."""
        from selenium.webdriver.common.by import By

        def found(driver: Any) -> Any:
            for el in driver.find_elements(By.CSS_SELECTOR, css):
                if not visible or el.is_displayed():
                    return el
            return None

        return self.until(found, f"element {css!r}", timeout)

    def elements(self, css: str) -> list[Any]:
        """Every element matching ``css`` now (no wait)."""
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        """The text (``textContent``, stripped) of the first element matching ``css``."""
        return str(self.element(css, visible=False).get_attribute("textContent") or "").strip()

    def wait_text(self, css: str, predicate: Callable[[str], bool], what: str,
                  timeout: float = WAIT_S) -> str:
        """Wait until the text of ``css`` meets ``predicate``; return that text."""
        def check(_driver: Any) -> str | None:
            text = self.text(css)
            return text if predicate(text) else None

        return self.until(check, what, timeout)

    def type_into(self, css: str, text: str) -> None:
        """Clear the field ``css`` and type ``text``, as a person would."""
        field = self.element(css)
        field.clear()
        field.send_keys(text)

    def click(self, css: str) -> None:
        """Click the first displayed element matching ``css``, once it is enabled."""
        self.until(lambda _d: (el := self.element(css)).is_enabled() and el,
                   f"enabled {css!r}").click()

    def script(self, source: str, *args: Any) -> Any:
        """Run ``source`` in the page (a function body: ``arguments[i]``, ``return``)."""
        return self.driver.execute_script(source, *args)

    def cookies(self) -> dict[str, str]:
        """The page's cookies by name (HttpOnly ones included: the driver sees them)."""
        return {c["name"]: c["value"] for c in self.driver.get_cookies()}

    # --- what the browser said ------------------------------------------------------------

    def drain(self) -> list[dict[str, Any]]:
        """Everything the browser logged since the last call."""
        return list(self.driver.get_log("browser"))

    def errors(self, allow: Iterable[str] = ()) -> list[str]:
        """The errors logged since the last call, less those matching a regex in ``allow``.

        CSP violations, script errors and failed loads are ``SEVERE``. A test that
        provokes a refusal (a wrong password's 401) allows that status explicitly.
        """
        patterns = [re.compile(p) for p in allow]
        return [e["message"] for e in self.drain() if e.get("level") == "SEVERE"
                and not any(p.search(e["message"]) for p in patterns)]

    # --- pictures -------------------------------------------------------------------------

    def resize(self, width: int, height: int = 900) -> None:
        """Make the viewport ``width`` x ``height`` CSS pixels.

        Through the DevTools protocol's device metrics: a window cannot grow taller
        than the (virtual) screen, and a whole-page screenshot needs that.
        """
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.until(lambda d: d.execute_script("return [window.innerWidth, window.innerHeight]")
                   == [width, height], f"a viewport of {width} x {height} px")

    def too_wide(self) -> list[str]:
        """What makes the page scroll sideways: the outermost elements wider than the viewport.

        Empty when the page fits its width (no horizontal scrolling).
        """
        return list(self.script(_TOO_WIDE))

    def unlabelled(self) -> list[str]:
        """The page's controls that name nothing to a screen reader (no label, no text)."""
        return list(self.script(_UNLABELLED))

    def screenshot(self, name: str, width: int) -> Path:
        """A PNG of the whole page at ``width`` px: ``<shots>/<name>-<width>.png``."""
        self.resize(width)
        height = int(self.script("return Math.min(4000, Math.max("
                                 "document.documentElement.scrollHeight,"
                                 " document.body.scrollHeight))"))
        self.resize(width, max(height, 600))
        path = self.shots / f"{name}-{width}.png"
        assert self.driver.save_screenshot(str(path)), f"no screenshot {path}"
        return path

    def close(self) -> None:
        """Quit chromium and its driver."""
        self.driver.quit()


def open_browser(tmp: Path, width: int = DESKTOP) -> Browser:
    """A fresh :class:`Browser` with its profile in ``tmp/profile`` (skips without chromium)."""
    require_chromium()
    profile = tmp / "profile"
    shutil.rmtree(profile, ignore_errors=True)
    profile.mkdir(parents=True)
    return Browser(profile, screenshot_dir(tmp), width)
