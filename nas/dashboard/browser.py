"""Headless Debian Chromium for the dashboard's browser test and its benchmark, offline.

The flags are ``../shared/DASHBOARD.md``'s: software WebGL, no sandbox (root in a container), and
selenium never looks for a driver to download. Selenium is a test extra, imported only here.
"""

from __future__ import annotations

import os

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-dev-shm-usage",
         "--no-first-run", "--window-size=1400,1600")
MISSING = f"no {CHROMIUM} and {CHROMEDRIVER} (apt-get install --no-install-recommends chromium chromium-driver)"


def available() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


def open_chrome(console_log: bool = False):
    """A selenium driver of the headless browser; ``console_log`` keeps the page's console for ``get_log``."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    if console_log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
