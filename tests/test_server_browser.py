"""The web page in headless Chromium (selenium): type text, press Speak, the <audio> element plays the stream.

Needs Debian's `chromium` and `chromium-driver`; installed with apt-get when missing if running as root with CI=true,
otherwise the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from fast_tts.server.launch import ServerProcess  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]
KEY = "browser-key"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required",
         # a fake microphone (a beep) that needs no permission prompt, for the record-and-clone path
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def _chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing the Debian packages in CI when they are missing."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    if os.environ.get("CI") != "true" or os.geteuid() != 0:
        pytest.skip("chromium/chromedriver not installed (the test installs them only as root with CI=true)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], check=True, env=env,
                   timeout=900)
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("apt-get installed chromium but chromium/chromedriver are not on PATH")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = _chromium()
    options = Options()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="fast-tts-chromium-")
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    with ServerProcess(["--speakers-dir", str(tmp_path_factory.mktemp("speakers"))], api_key=KEY) as srv:
        yield srv


def test_type_text_press_speak_audio_plays(browser, server: ServerProcess) -> None:
    browser.get(server.url + "/")
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(KEY, Keys.TAB)  # change event: the page reloads its info with the key
    WebDriverWait(browser, 30).until(lambda d: "fast-tts-piper" in d.find_element(By.ID, "server-info").text)
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#voice option"))
    text = browser.find_element(By.ID, "text")
    text.send_keys(" ".join(f"Sentence {n} of the browser test streams while the page already plays it."
                            for n in range(1, 11)))
    started = time.monotonic()
    browser.find_element(By.ID, "speak").click()
    # playing while streaming: the element's clock moves before the last bytes have arrived
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("const a = document.getElementById('player'); return a.currentTime > 0.2;")
    )
    first_play_s = time.monotonic() - started
    assert browser.execute_script("return window.fastTTS.done") is False, "played only after the whole download"
    WebDriverWait(browser, 60).until(lambda d: d.execute_script("return window.fastTTS.done || !!window.fastTTS.error"))
    state = browser.execute_script(
        "const a = document.getElementById('player');"
        "return {bytes: window.fastTTS.bytes, mode: window.fastTTS.mode, error: window.fastTTS.error,"
        " mediaError: a.error && a.error.message, duration: a.duration, src: a.currentSrc,"
        " download: document.getElementById('download').href};"
    )
    assert state["error"] is None and state["mediaError"] is None, state
    assert state["mode"] == "mediasource", state  # mp3 streamed through MediaSource
    assert state["bytes"] > 10_000, state
    assert state["src"].startswith("blob:") and state["download"].startswith("blob:"), state
    assert first_play_s < 30
    assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")


def test_page_reports_a_bad_key(browser, server: ServerProcess) -> None:
    browser.get(server.url + "/")
    browser.execute_script("localStorage.removeItem('fast-tts-key');")
    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: "401" in d.find_element(By.ID, "server-info").text)


CHATTTS_FIXTURES = Path(os.environ.get(
    "FAST_TTS_CHATTTS_FIXTURES", Path(__file__).resolve().parents[1] / ".." / "shared/fixtures/chattts"))


@pytest.fixture(scope="module")
def cloning_server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    """A server on the fixture-sized random ChatTTS checkpoint (a family that can clone)."""
    if not (CHATTTS_FIXTURES / "cases.json").is_file():
        pytest.skip(f"no ChatTTS fixtures at {CHATTTS_FIXTURES}")
    pytest.importorskip("torch")
    from chattts_checkpoint import build_fixture_checkpoint

    root = tmp_path_factory.mktemp("chattts_ckpt")
    build_fixture_checkpoint(root, CHATTTS_FIXTURES)
    args = ["--model", str(root), "--speakers-dir", str(tmp_path_factory.mktemp("speakers"))]
    with ServerProcess(args, timeout_s=180) as srv:
        yield srv


def test_record_from_microphone_and_clone(browser, cloning_server: ServerProcess) -> None:
    browser.get(cloning_server.url + "/")
    browser.execute_script("localStorage.removeItem('fast-tts-key');")
    browser.get(cloning_server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "clone-section").is_displayed())
    browser.find_element(By.ID, "record").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "record").text == "Stop recording")
    time.sleep(1.5)
    browser.find_element(By.ID, "record").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "ref-preview").is_displayed())
    browser.find_element(By.ID, "text").send_keys("你好")
    browser.execute_script("document.getElementById('format').value = 'wav';"
                           "document.querySelector('details').open = true;")
    # random weights never stop by themselves: bound the length through the engine-parameters box
    browser.find_element(By.ID, "params").send_keys('{"max_tokens": 40, "min_tokens": 40, "seed": 3}')
    browser.find_element(By.ID, "clone").click()
    finished = "return window.fastTTS.done || !!window.fastTTS.error"
    WebDriverWait(browser, 120).until(lambda d: d.execute_script(finished))
    state = browser.execute_script("return {bytes: window.fastTTS.bytes, error: window.fastTTS.error,"
                                   " mode: window.fastTTS.mode};")
    assert state["error"] is None and state["mode"] == "whole", state
    assert state["bytes"] > (2 * 40 - 1) * 256 * 2, state  # 16-bit samples of 40 tokens plus the header
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("const a = document.getElementById('player'); return a.duration > 0.5;"))
