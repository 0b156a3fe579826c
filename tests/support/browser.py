"""A real headless Chromium for the web UI's tests and benchmark.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them),
driven with selenium.  Screenshots go to ``$BITELAB_SCREENSHOTS`` if set,
else to a temporary directory the run prints.
"""

import os
import shutil
import tempfile

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def start_chromium(width=1280, height=1000):
    """A headless Chromium under chromedriver: a selenium ``WebDriver``."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            raise RuntimeError(
                f"{path} is missing: install Debian's chromium and chromium-driver"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        # root in a container has no user namespaces for the sandbox
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def screenshot_dir():
    """Where screenshots go: ``$BITELAB_SCREENSHOTS``, else a new temporary
    directory."""
    directory = os.environ.get("BITELAB_SCREENSHOTS") or tempfile.mkdtemp(
        prefix="bitelab-screenshots-"
    )
    os.makedirs(directory, exist_ok=True)
    return directory


def wait_until(driver, condition, what, timeout=20):
    """Wait until ``condition(driver)`` is true; fail naming ``what``, with
    the browser's console log, otherwise."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        log = "\n".join(str(entry) for entry in driver.get_log("browser"))
        raise AssertionError(f"timed out waiting for {what}\nbrowser log:\n{log}")


def text_of(driver, css):
    """The text of the first element matching ``css`` ("" if none)."""
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def board_row(driver, name):
    """``(state, holder)`` shown in the lab view's row of board ``name``."""
    cells = driver.find_elements(By.CSS_SELECTOR, f'#boards tr[data-name="{name}"] td')
    if not cells:
        return None
    return cells[1].text, cells[2].text


def terminal_text(driver):
    """What the console's terminal shows (xterm.js's rows)."""
    return driver.execute_script(
        "const rows = document.querySelector('#terminal .xterm-rows');"
        "return rows ? rows.innerText : '';"
    )
