"""The web UI in a real headless Chromium against a real ``twistd`` whose
board's serial console is a pty: sign in with a link from ``bitelab web``,
watch the lab change live, reserve, use the console both ways, release
and see the console cut, and as another user be refused the console.

Screenshots of the lab view (wide and phone-sized) and of the console are
saved in ``$BITELAB_SCREENSHOTS`` (default: a temporary directory, printed).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from support.browser import (
    board_row,
    screenshot_dir,
    start_chromium,
    terminal_text,
    text_of,
    wait_until,
)
from support.pty import PtyBoard
from support.server import REPO, LabServer, repo_env, wait_for

pytestmark = pytest.mark.e2e

BOARDS = """
classes {{ zynq {{ arch = arm-armv7; }} }}
boards [
    {{ name = con-1; brdclass = zynq;
       options = [ {{ cls = serialconsole, val = "{device}" }} ] }},
    {{ name = zynq-2; brdclass = zynq; options = [] }},
    {{ name = pwr-1; brdclass = zynq; options = [
        {{ cls = cmdpower, on = /bin/true, off = /bin/true, status = /bin/false }} ] }},
]
"""


@pytest.fixture(scope="module")
def pty_board():
    """The board's end of the console's pty."""
    board = PtyBoard()
    yield board
    board.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, pty_board):
    """One real server for the module, its console on ``pty_board``."""
    server = LabServer(
        tmp_path_factory.mktemp("weblab"), boards=BOARDS.format(device=pty_board.path)
    )
    server.start()
    server.tokens = {user: server.token(user) for user in ("alice", "bob")}
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shots():
    """Where the screenshots go."""
    directory = screenshot_dir()
    print(f"\nweb UI screenshots in {directory}")
    return directory


@pytest.fixture
def browser():
    """A fresh headless Chromium (no cookies), closed after the test."""
    driver = start_chromium()
    yield driver
    driver.quit()


def login_link(lab, user):
    """What ``bitelab web`` prints for ``user``: the one-time link."""
    bitelab = Path(sys.executable).parent / "bitelab"
    result = subprocess.run(
        [str(bitelab), "web"],
        env=repo_env({"BITELAB_URL": lab.url, "BITELAB_AUTH": lab.tokens[user]}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "valid once" in result.stderr
    return result.stdout.strip()


def show_console(browser):
    """Scroll the console into the screenshot."""
    browser.execute_script(
        "document.getElementById('console-section').scrollIntoView()"
    )


def api(lab, method, path, user, body=None):
    status, answer = lab.request(method, "/api/v1" + path, body, lab.tokens[user])
    assert status == 200, answer
    return answer


def test_sign_in_reserve_console_and_release_in_a_browser(
    lab, pty_board, browser, shots
):
    """A user signs in with a login link, sees another client's reservation
    appear live, reserves a board, sees what the board prints in the
    terminal and types to it, then releases: the console is cut with a
    notice and, in the lab view, the row turns free without a reload."""
    link = login_link(lab, "alice")
    assert link.startswith(lab.url + "/login#code=")
    browser.get(link)
    # the code leaves the address bar before anything else happens
    assert "code=" not in browser.current_url
    browser.find_element(By.ID, "use-link").click()
    wait_until(
        browser, lambda d: board_row(d, "zynq-2") == ("free", ""), "the lab view"
    )
    assert browser.find_element(By.ID, "me").text == "alice"
    # a board whose power cannot be read shows why
    power_error = browser.find_element(By.CSS_SELECTOR, 'tr[data-name="pwr-1"] td.perr')
    assert "cmdpower failed" in power_error.text, power_error.text
    browser.execute_script("window.notReloaded = true")

    api(lab, "POST", "/boards/zynq-2/reserve", "bob", {})
    wait_until(
        browser,
        lambda d: board_row(d, "zynq-2") == ("reserved", "bob"),
        "bob's reservation to show in the lab view",
    )
    assert browser.execute_script("return window.notReloaded === true")
    browser.save_screenshot(os.path.join(shots, "lab.png"))
    browser.set_window_size(390, 844)
    browser.save_screenshot(os.path.join(shots, "lab-phone.png"))
    browser.set_window_size(1280, 1000)

    browser.find_element(By.LINK_TEXT, "con-1").click()
    wait_until(browser, lambda d: text_of(d, "#b-state") == "free", "the board page")
    browser.find_element(By.ID, "reserve").click()
    wait_until(browser, lambda d: text_of(d, "#b-holder") == "alice (you)", "reserved")
    browser.find_element(By.ID, "connect").click()
    wait_until(
        browser,
        lambda d: text_of(d, "#console-state").startswith("Connected"),
        "the console to connect",
    )
    pty_board.print(b"U-Boot 2024.01 (bitelab pty board)\r\n=> ")
    wait_until(
        browser,
        lambda d: "U-Boot 2024.01 (bitelab pty board)" in terminal_text(d),
        "the board's output in the terminal",
    )
    terminal = browser.find_element(By.CSS_SELECTOR, "#terminal .xterm-helper-textarea")
    terminal.send_keys("printenv bootcmd" + Keys.ENTER)
    wait_for(
        lambda: b"printenv bootcmd\r" in pty_board.read(),
        what="the keystrokes to reach the pty",
    )
    pty_board.print(b"printenv bootcmd\r\nbootcmd=run distro_bootcmd\r\n=> ")
    wait_until(
        browser,
        lambda d: "bootcmd=run distro_bootcmd" in terminal_text(d),
        "the board's answer",
    )
    show_console(browser)
    browser.save_screenshot(os.path.join(shots, "console.png"))
    browser.find_element(By.ID, "show-log").click()
    wait_until(
        browser,
        lambda d: "bootcmd=run distro_bootcmd" in text_of(d, "#log"),
        "this reservation's console log",
    )
    assert text_of(browser, "#log").startswith("=== bitelab: reserved by alice")
    download = browser.find_element(By.ID, "download-log")
    assert download.get_attribute("download") == "con-1-console.log"

    board_window = browser.current_window_handle
    browser.switch_to.new_window("window")
    lab_window = browser.current_window_handle
    browser.get(lab.url + "/")
    wait_until(
        browser,
        lambda d: board_row(d, "con-1") == ("reserved", "alice"),
        "alice's reservation in the lab view",
    )
    browser.execute_script("window.notReloaded = true")
    browser.switch_to.window(board_window)
    browser.find_element(By.ID, "release").click()
    wait_until(
        browser,
        lambda d: "reservation of con-1 ended" in text_of(d, "#console-notice"),
        "the console's cut-off notice",
    )
    assert "[bitelab: reservation of con-1 ended" in terminal_text(browser)
    assert browser.find_element(By.ID, "connect").is_displayed()
    show_console(browser)
    browser.save_screenshot(os.path.join(shots, "console-cut.png"))
    browser.switch_to.window(lab_window)
    wait_until(
        browser,
        lambda d: board_row(d, "con-1") == ("free", ""),
        "the row to turn free",
    )
    assert browser.execute_script("return window.notReloaded === true")


def test_another_user_is_refused_the_console_and_signs_out(
    lab, pty_board, browser, shots
):
    """A user who does not hold the board signs in with their token (from
    the keyboard), opens the board's console and is refused, without a
    byte of the holder's output; signing out ends the session for good."""
    api(lab, "POST", "/boards/con-1/reserve", "alice", {})
    assert pty_board.print(b"alice's secret output\r\n"), "unsent"
    wait_for(
        lambda: b"secret"
        in lab.request(
            "GET", "/api/v1/boards/con-1/console", token=lab.tokens["alice"]
        )[1],
        what="the output in the console log",
    )
    browser.get(lab.url + "/boards/con-1")
    wait_until(browser, lambda d: "/login" in d.current_url, "the sign-in page")
    field = browser.find_element(By.ID, "token")
    field.send_keys(lab.tokens["bob"] + Keys.ENTER)
    wait_until(browser, lambda d: text_of(d, "#b-holder") == "alice", "the board page")
    cookie = browser.get_cookie("bitelab_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert not browser.find_element(By.ID, "holder-actions").is_displayed()
    browser.find_element(By.ID, "connect").click()
    wait_until(
        browser,
        lambda d: "do not hold board con-1" in text_of(d, "#console-notice"),
        "the refusal",
    )
    assert "secret" not in terminal_text(browser)
    show_console(browser)
    browser.save_screenshot(os.path.join(shots, "console-refused.png"))

    browser.find_element(By.ID, "sign-out").click()
    wait_until(browser, lambda d: d.current_url.endswith("/login"), "signed out")
    status, _ = lab.request(
        "GET",
        "/api/v1/whoami",
        headers={"Cookie": f"bitelab_session={cookie['value']}"},
    )
    assert status == 401
    browser.get(lab.url + "/")
    wait_until(browser, lambda d: "/login" in d.current_url, "the sign-in page again")
    api(lab, "POST", "/boards/con-1/release", "alice", {})
