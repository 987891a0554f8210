"""Headless Chromium from the distribution's packages (``chromium``, ``chromium-driver``),
driven by Selenium: the dashboard's browser tests and its rendering benchmark use it."""

from __future__ import annotations

import os
import shutil

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

WINDOW = (1400, 900)
_DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver")


class BrowserMissing(RuntimeError):
    """No Chromium or no chromedriver here; the message says what to install."""


def chromium_paths() -> tuple[str, str]:
    """(browser, driver): ``$AMS_CHROMIUM`` and ``$AMS_CHROMEDRIVER``, or the Debian ones."""
    browser = os.environ.get("AMS_CHROMIUM") or shutil.which("chromium")
    driver = os.environ.get("AMS_CHROMEDRIVER") or next(
        (found for name in _DRIVERS if (found := shutil.which(name))), None
    )
    if browser is None or driver is None:
        raise BrowserMissing(
            "no headless Chromium here: apt-get install chromium chromium-driver (or set"
            " AMS_CHROMIUM and AMS_CHROMEDRIVER)"
        )
    return browser, driver


def headless_chromium() -> webdriver.Chrome:
    """A fresh headless Chromium (its own profile, no sandbox when root, as in containers)."""
    browser, driver = chromium_paths()
    options = Options()
    options.binary_location = browser
    for argument in ("--headless=new", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}", "--no-first-run"):  # fmt: skip
        options.add_argument(argument)
    if os.geteuid() == 0:  # Chromium refuses to run its sandbox as root
        options.add_argument("--no-sandbox")
    # Selenium Manager must not try the network for a driver: the path is given
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
