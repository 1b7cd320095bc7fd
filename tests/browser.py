"""Drive the app in headless Chromium (Selenium + Debian's ``chromium`` and ``chromium-driver``).

Used by tests/test_app_browser.py, and as a script it writes the screenshot of docs/app.md:

    python -m tests.browser docs/app.png

(the methods that ``make app`` offers here, one shapes example, the 16 shapes classes). Without Chromium
the tests skip, saying how to install it; in CI (``CI=true``) they fail instead.
"""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"


def browser_paths() -> Optional[Tuple[str, str]]:
    """(chromium, chromedriver) from PATH, or None when either is missing."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def require_browser() -> Tuple[str, str]:
    """The browser paths; otherwise pytest skips (fails under CI=true) with the install command."""
    import pytest

    paths = browser_paths()
    try:
        import selenium  # noqa: F401
    except ImportError:
        paths = None
    if paths is None:
        message = f"The app's browser tests need Chromium, its driver and Selenium: {INSTALL}; pip install -e '.[test]'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(args: Sequence[str], log_path: str, timeout: float = 240) -> Tuple[subprocess.Popen, str]:
    """Start ``python -m ldvc_d2.app`` on a free port (stdout/stderr to ``log_path``); returns the process
    and its URL once the page answers."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "ldvc_d2.app", "--port", str(port), *args], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"The app did not start within {timeout:.0f} s:\n{Path(log_path).read_text()[-3000:]}")


def files_folder(log_path: str) -> str:
    """The private folder the server logged it keeps uploads and results in."""
    import re

    found = re.search(r"Uploads and results live in (\S+) \(removed", Path(log_path).read_text())
    assert found, f"the server did not log its files folder:\n{Path(log_path).read_text()[-2000:]}"
    return found.group(1)


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def make_driver(paths: Tuple[str, str], width: int = 1500, height: int = 1300):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(paths[1]), options=options)


def _wait(driver, condition, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except Exception as e:
        raise AssertionError(f"Timed out after {timeout} s waiting for {what}; status: '{status(driver)}'") from e


def status(driver) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, "#status")
    return found[0].text.strip() if found else ""


def wait_status(driver, start: str, before: str, timeout: float = 120) -> str:
    """Wait until the status line differs from ``before`` and starts with ``start``; returns it."""
    _wait(driver, lambda d: status(d) != before and status(d).startswith(start), timeout,
          f"a status starting with '{start}'")
    return status(driver)


def open_page(driver, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#run"), 60, "the page")


def pick(driver, elem_id: str, start: str) -> None:
    """Open the menu ``elem_id`` and click its first option whose text starts with ``start``."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input").click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"[role=option][aria-label^='{start}']"), 20,
          f"option '{start}' of #{elem_id}")[0].click()


def upload(driver, path: str) -> None:
    """Send a file to the image upload (what choosing it in the file dialog does)."""
    from selenium.webdriver.common.by import By

    before = status(driver)
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))
    _wait(driver, lambda d: status(d) != before and status(d), 60, "the upload to be read")


def set_vocabulary(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, "#vocabulary textarea")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    if text:
        box.send_keys(text)


def choose_methods(driver, names: Sequence[str]) -> None:
    """Tick exactly ``names`` in the method list."""
    from selenium.webdriver.common.by import By

    for label in driver.find_elements(By.CSS_SELECTOR, "#methods label"):
        box = label.find_element(By.CSS_SELECTOR, "input[type=checkbox]")
        if box.is_selected() != (label.text.strip() in names):
            label.click()


def tick(driver, elem_id: str) -> None:
    """Tick the checkbox ``elem_id``."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=checkbox]")
    if not box.is_selected():
        box.click()


def shows_image(driver, elem_id: str, timeout: float = 10) -> bool:
    """Whether the image component ``elem_id`` is on the page with a picture (waits up to ``timeout``)."""
    from selenium.webdriver.common.by import By

    try:
        _wait(driver, lambda d: any(i.is_displayed() for i in d.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")),
              timeout, f"a picture in #{elem_id}")
        return True
    except AssertionError:
        return False


def run(driver, start: str = "Segmented", timeout: float = 180) -> str:
    """Press Segment and wait for the new status (starting with ``start``)."""
    from selenium.webdriver.common.by import By

    before = status(driver)
    driver.find_element(By.CSS_SELECTOR, "#run").click()
    return wait_status(driver, start, before, timeout)


def slot_header(driver, index: int) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f"#header-{index}").text


def download_labels(driver, index: int) -> bytes:
    """The bytes behind the label map's download link of method ``index``."""
    from selenium.webdriver.common.by import By

    link = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"#labels-{index} a[href]"), 30,
                 f"the label map link of method {index}")[0]
    with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as response:
        return response.read()


def write_screenshot(out: str, methods: List[str]) -> None:
    """Serve the app with ``methods`` (``--method`` specs; [] = the default list), segment the first shapes
    example with the 16 shapes classes using every method, and save the page as a PNG."""
    paths = browser_paths()
    if paths is None:
        raise SystemExit(f"Chromium is missing: {INSTALL}")
    from selenium.webdriver.common.by import By

    proc, url = start_app([a for m in methods for a in ("--method", m)], "/tmp/ldvc_d2_app_screenshot.log")
    driver = make_driver(paths, 1500, 1250)
    try:
        open_page(driver, url)
        pick(driver, "class-list", "shapes_zs_val")
        pick(driver, "example", "example 1")
        wait_status(driver, "Example", "", 60)
        labels = driver.find_elements(By.CSS_SELECTOR, "#methods label")
        choose_methods(driver, [label.text.strip() for label in labels][:3])
        print(run(driver))
        time.sleep(1.0)  # images appear after the status
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1500, min(int(height) + 40, 4000))  # the whole page in one picture
        time.sleep(0.5)
        driver.save_screenshot(out)
    finally:
        driver.quit()
        stop_app(proc)


if __name__ == "__main__":
    write_screenshot(sys.argv[1] if len(sys.argv) > 1 else "docs/app.png", sys.argv[2:])
