"""End to end: the ``textmef serve`` page in headless Chromium against a real waitress server.

Needs ``selenium`` (pip) and Debian's ``chromium`` and ``chromium-driver`` packages; the
test skips, saying which is missing, without them. Nothing is downloaded: the system
chromedriver is passed explicitly, so Selenium Manager never runs. Paths can be
overridden with ``TEXTMEF_CHROMIUM`` and ``TEXTMEF_CHROMEDRIVER``.

With ``TEXTMEF_SCREENSHOT=1`` the screenshot of the page with a result goes to
``docs/webapp.png`` (for the README); otherwise into the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("flask", reason="the web app needs Flask: pip install 'textmef[web]'")
pytest.importorskip("waitress", reason="textmef serve needs waitress: pip install 'textmef[web]'")
pytest.importorskip("selenium", reason="the browser test needs selenium: pip install selenium")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from werkzeug.datastructures import FileStorage  # noqa: E402
from werkzeug.test import encode_multipart  # noqa: E402

from textmef import io  # noqa: E402
from textmef.api import load_model, set_threads  # noqa: E402
from textmef.models import create_model  # noqa: E402
from textmef.web import app as web_app  # noqa: E402
from textmef.web.app import FUSION_QUEUE_KEY, create_app  # noqa: E402
from textmef.web.cli import make_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
CHROMIUM = Path(os.environ.get("TEXTMEF_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("TEXTMEF_CHROMEDRIVER", "/usr/bin/chromedriver"))
WAIT_S = 20

for _program, _package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
    if not os.access(_program, os.X_OK):
        pytest.skip(
            f"{_program} not found: apt-get install -y --no-install-recommends {_package}",
            allow_module_level=True,
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real waitress server on a free port, serving from a background thread."""
    import numba
    import torch

    saved = torch.get_num_threads(), numba.get_num_threads()
    set_threads(1)  # a 256x256 pair needs no more, and the machine is shared
    temp_root = tmp_path_factory.mktemp("serve-root")
    app = create_app(load_model(), temp_root=temp_root)
    server = make_server(app, "127.0.0.1", 0, max_upload_mb=200)  # threads: the app's
    thread = threading.Thread(target=server.run, name="textmef-serve", daemon=True)
    thread.start()
    yield server
    server.stop()
    thread.join(10)
    app.extensions[FUSION_QUEUE_KEY].close()
    torch.set_num_threads(saved[0])
    numba.set_num_threads(saved[1])
    assert not thread.is_alive(), "the server did not stop"
    assert list(temp_root.iterdir()) == [], "a request left files behind"


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture
def photos(tmp_path) -> dict[str, Path]:
    """The sample pair (or, without it, a synthetic one) and a frame of another size."""
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = {}
    if (SAMPLES / "under.png").is_file() and (SAMPLES / "over.png").is_file():
        for name in ("under.png", "over.png"):
            paths[name] = Path(shutil.copy(SAMPLES / name, folder / name))
    else:
        ys, xs = np.mgrid[0:256, 0:256].astype(np.float32) / 255
        radiance = np.stack([xs, ys, (xs + ys) / 2], axis=-1) ** 2 * 4
        for name, gain in (("under.png", 0.15), ("over.png", 4.0)):
            pixels = np.clip(radiance * gain, 0, 1) ** (1 / 2.2)
            paths[name] = io.write_image(folder / name, pixels, 8)
    small = io.read_image(paths["over.png"]).pixels[:128, :128]
    paths["small.png"] = io.write_image(folder / "small.png", small, 8)
    return paths


def wait(driver, condition, message):
    return WebDriverWait(driver, WAIT_S).until(condition, message)


def choose(driver, *paths: Path) -> None:
    driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))


def error_text(driver) -> str:
    error = driver.find_element(By.ID, "error")
    return error.text if error.is_displayed() else ""


def test_fuse_compare_and_download_in_chromium(server, browser, photos, tmp_path):
    browser.get(server.url)
    assert "textmef" in browser.title
    fuse = browser.find_element(By.ID, "fuse")

    # One photo: the page says what is missing, and Fuse stays off.
    choose(browser, photos["under.png"])
    assert "at least 2 photos" in error_text(browser) and "under.png" in error_text(browser)
    assert not fuse.is_enabled()

    # Two sizes: the server refuses, and its message (naming both files) is shown.
    choose(browser, photos["under.png"], photos["small.png"])
    assert error_text(browser) == "" and fuse.is_enabled()
    fuse.click()
    wait(browser, lambda d: "small.png" in error_text(d), "no error for mixed sizes")
    assert "small.png: is 128x128 but under.png is 256x256" in error_text(browser)

    # The real thing, picked brightest first: the page shows them darkest first.
    choose(browser, photos["over.png"], photos["under.png"])
    fuse.click()
    wait(browser, lambda d: d.find_element(By.ID, "result").is_displayed(), "no result shown")
    for image_id in ("fused-img", "input-img"):
        wait(
            browser,
            lambda d, i=image_id: d.execute_script(
                "const im = document.getElementById(arguments[0]);"
                "return im.complete && im.naturalWidth > 0;",
                i,
            ),
            f"{image_id} did not load",
        )
    assert error_text(browser) == ""
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#thumbs .name")]
    assert names == ["under.png", "over.png"]
    captions = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#thumbs .caption")]
    assert captions[0].startswith("darkest") and captions[1].startswith("brightest")
    assert "256×256" in browser.find_element(By.ID, "meta").text

    # The slider: keyboard on the range input, then a drag on the image itself.
    slider = browser.find_element(By.ID, "compare")
    slider.send_keys(Keys.HOME)
    assert slider.get_property("value") == "0"
    assert clip_of_input(browser).startswith("inset(0px 0px 0px 0")
    stage = browser.find_element(By.ID, "stage")
    width = stage.size["width"]
    ActionChains(browser).move_to_element_with_offset(
        stage, -width // 2 + 2, 0
    ).click_and_hold().move_by_offset(int(width * 0.6), 0).release().perform()
    value = int(slider.get_property("value"))
    assert 55 <= value <= 65, value
    assert f"{value}%" in clip_of_input(browser)

    # The download link: a PNG of the inputs' size, named fused.png.
    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("download") == "fused.png"
    assert "8-bit PNG" in link.text
    with urllib.request.urlopen(link.get_property("href"), timeout=WAIT_S) as response:
        disposition = response.headers["Content-Disposition"]
        data = response.read()
    assert "fused.png" in disposition and data[:8] == b"\x89PNG\r\n\x1a\n"
    fused = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert fused.shape == (256, 256, 3) and fused.dtype == np.uint8

    # The screenshot for the README: the whole page, result and slider in view.
    slider.send_keys(Keys.HOME, *[Keys.ARROW_RIGHT] * 55)
    browser.execute_script("document.activeElement.blur()")
    fit_viewport_to_page(browser)
    target = (
        ROOT / "docs" / "webapp.png"
        if os.environ.get("TEXTMEF_SCREENSHOT") == "1"
        else tmp_path / "webapp.png"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(target))
    shot = cv2.imread(str(target))
    assert shot is not None and shot.shape[1] >= 1000


def clip_of_input(driver) -> str:
    return driver.execute_script(
        "return getComputedStyle(document.getElementById('input-img')).clipPath;"
    )


def fit_viewport_to_page(driver, width: int = 1280, most: int = 1600) -> None:
    """Make the viewport as tall as the page, so one screenshot shows all of it.

    The comparison is sized in viewport units, so the page grows with the viewport: a few
    rounds settle it.
    """
    height = 900
    for _ in range(5):
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        needed = int(driver.execute_script("return document.documentElement.scrollHeight"))
        if needed <= height or height >= most:
            return
        height = min(needed, most)


def health(server) -> dict:
    with urllib.request.urlopen(server.url + "healthz", timeout=WAIT_S) as response:
        return json.load(response)


def wait_for_health(server, condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition(health(server)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_busy_server_is_retried_once_and_queue_time_shown(browser, photos, tmp_path, monkeypatch):
    """A full queue: the page shows the server's 503 message, waits Retry-After, retries."""
    permits = threading.Semaphore(0)  # each fusion needs one: the test lets them through
    real_fuse = web_app._fuse

    def held_fuse(*args):
        assert permits.acquire(timeout=2 * WAIT_S), "the test never let this fusion run"
        return real_fuse(*args)

    monkeypatch.setattr(web_app, "_fuse", held_fuse)
    # Retry-After = this guess x (1 running + 1 waiting): 4 s, time enough to watch.
    monkeypatch.setattr("textmef.web.queue._FIRST_GUESS_S", 2.0)
    temp_root = tmp_path / "root"
    temp_root.mkdir()
    app = create_app(create_model("textmef-tiny").eval(), temp_root=temp_root, max_queue=1)
    server = make_server(app, "127.0.0.1", 0, max_upload_mb=200)
    serving = threading.Thread(target=server.run, name="textmef-serve-busy", daemon=True)
    serving.start()
    paths = [photos["under.png"], photos["over.png"]]
    files = [FileStorage(BytesIO(p.read_bytes()), p.name) for p in paths]
    boundary, body = encode_multipart({"files": files})
    statuses: list[int] = []

    def fuse_in_background() -> None:
        request = urllib.request.Request(
            server.url + "api/fuse",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=3 * WAIT_S) as response:
            statuses.append(response.status)

    others = [threading.Thread(target=fuse_in_background, daemon=True) for _ in range(2)]
    try:
        others[0].start()  # runs (held)
        wait_for_health(server, lambda h: h["workers_busy"] == 1, "the first fusion to run")
        others[1].start()  # waits: the queue (of 1) is full
        wait_for_health(server, lambda h: h["queued"] == 1, "the second fusion to queue")

        browser.get(server.url)
        choose(browser, *paths)
        browser.find_element(By.ID, "fuse").click()
        wait(browser, lambda d: "server is busy" in error_text(d), "no busy message")
        assert "try again in 4 s" in error_text(browser)
        status = browser.find_element(By.ID, "busy")
        wait(browser, lambda d: "trying again in" in status.text, "no countdown")

        permits.release()  # the first finishes, the second runs (held): room in the queue
        wait_for_health(server, lambda h: h["queued"] == 0, "the second fusion to run")
        # The page's retry, after 4 s, waits in the queue behind the second.
        wait_for_health(server, lambda h: h["queued"] == 1, "the page's retry to queue")
        time.sleep(0.3)
        permits.release(2)
        wait(browser, lambda d: d.find_element(By.ID, "result").is_displayed(), "no result")
        assert error_text(browser) == ""
        assert "s in the queue" in browser.find_element(By.ID, "meta").text
        for thread in others:
            thread.join(WAIT_S)
        assert statuses == [200, 200]
    finally:
        permits.release(10)
        server.stop()
        serving.join(10)
        app.extensions[FUSION_QUEUE_KEY].close()
    assert list(temp_root.iterdir()) == []
