"""The playground page (gptsmith/serve/static/playground.html) in a real headless Chromium:
load it, send a prompt, watch the answer stream in, press stop, and take a screenshot."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from serving_helpers import API_KEY, request, wait_until

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1200,900"]


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """Selenium driving Debian's chromium through its chromedriver (never a downloaded browser)."""
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="selenium is not installed (pip install selenium)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("chromium and chromedriver are not installed: apt-get install chromium chromium-driver "
                    "(`make test` does it when run as root on Debian)")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return "".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, css))


def _send_completion(driver, prompt: str, *, max_tokens: int) -> None:
    """Switch to the completion tab, set max tokens, type ``prompt`` and press send."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "tab-completion").click()
    field = driver.find_element(By.ID, "max-tokens")
    field.clear()
    field.send_keys(str(max_tokens))
    driver.find_element(By.ID, "prompt").send_keys(prompt)
    driver.find_element(By.ID, "send").click()


def _png_colours(path: Path) -> int:
    """How many distinct pixel values a PNG has (a blank page has one or two)."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        return len(image.convert("RGB").getcolors(maxcolors=1 << 24))


def test_playground_streams_an_answer_and_stops_it(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    assert request(server.url, "GET", "/", key=None)[0] == 200  # the page itself needs no key
    engine = server.app.state.engine
    server.model.delay = 0.03  # ~30 tokens/s: slow enough to watch, and to stop mid-answer
    server.model.banned = [server.tokenizer.eot_id]  # the sampled answer must not end by itself
    try:
        browser.get(server.url + "/")
        key = browser.find_element(By.ID, "api-key")
        key.send_keys(API_KEY, Keys.TAB)  # "change": the page lists the models with the key
        assert wait_until(lambda: "tiny" in browser.find_element(By.ID, "model").text, 10)
        browser.find_element(By.ID, "prompt").send_keys("Hello there")
        browser.find_element(By.ID, "send").click()
        assert wait_until(lambda: len(_text(browser, ".msg.assistant .text")) >= 3, 10)  # streaming in
        first = _text(browser, ".msg.assistant .text")
        assert wait_until(lambda: len(_text(browser, ".msg.assistant .text")) > len(first), 10)
        assert "tokens/s" in browser.find_element(By.ID, "stats").text
        browser.find_element(By.ID, "stop").click()
        assert wait_until(lambda: "stopped" in browser.find_element(By.ID, "stats").text, 10)
        assert wait_until(lambda: engine.active == 0, 10)  # the server freed the slot
        assert _text(browser, ".msg.user .text") == "Hello there"
        shot = tmp_path / "playground.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and _png_colours(shot) > 20

        server.model.delay = 0.0
        _send_completion(browser, "Once upon", max_tokens=8)
        stats = browser.find_element(By.ID, "stats")
        assert wait_until(lambda: "tokens/s" in stats.text and "…" not in stats.text, 10)
        assert browser.find_element(By.ID, "completion-output").text.startswith("Once upon")
        assert browser.find_element(By.ID, "error").text == ""
    finally:
        server.model.delay = 0.0
        server.model.banned = []


def test_tabs_and_clear_during_an_answer_leave_it_and_the_conversation_whole(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    engine = server.app.state.engine
    server.model.delay = 0.03
    server.model.banned = [server.tokenizer.eot_id]  # every answer runs to its max tokens
    try:
        browser.get(server.url + "/")
        browser.find_element(By.ID, "api-key").send_keys(API_KEY, Keys.TAB)
        assert wait_until(lambda: "tiny" in browser.find_element(By.ID, "model").text, 10)
        _send_completion(browser, "Once upon", max_tokens=40)
        stats = browser.find_element(By.ID, "stats")
        assert wait_until(lambda: "tokens/s" in stats.text, 10)
        browser.find_element(By.ID, "tab-chat").click()  # while the completion streams
        assert wait_until(lambda: "…" not in stats.text, 20)
        assert browser.find_element(By.ID, "error").text == ""  # was: Cannot read properties of undefined
        assert stats.text.startswith("40 tokens")  # the completion ran to its end
        assert browser.execute_script("return state.messages.length") == 0  # and is no chat turn

        browser.find_element(By.ID, "prompt").send_keys("Hello")
        browser.find_element(By.ID, "send").click()
        assert wait_until(lambda: len(_text(browser, ".msg.assistant .text")) >= 2, 10)
        browser.find_element(By.ID, "clear").click()  # mid-answer: a new conversation
        assert wait_until(lambda: engine.active == 0, 10)  # the answer stopped, its row is free
        assert wait_until(lambda: not browser.find_element(By.ID, "send").get_attribute("disabled"), 10)
        assert browser.execute_script("return state.messages.length") == 0  # was: the old answer in it
    finally:
        server.model.delay = 0.0
        server.model.banned = []


def test_a_chat_turn_that_fails_leaves_the_conversation_and_its_text_comes_back(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")  # no API key given: every request is refused
    assert wait_until(lambda: "Cannot list models" in browser.find_element(By.ID, "error").text, 10)
    browser.find_element(By.ID, "prompt").send_keys("Hello")
    browser.find_element(By.ID, "send").click()
    error = browser.find_element(By.ID, "error")
    assert wait_until(lambda: "API key" in error.text, 10)
    assert wait_until(lambda: not browser.find_element(By.ID, "send").get_attribute("disabled"), 10)
    assert browser.execute_script("return state.messages.length") == 0  # was: Hello and an empty reply
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == "Hello"  # to resend with a key


def test_the_page_is_shipped_in_the_package():
    from importlib import resources

    page = resources.files("gptsmith.serve").joinpath("static", "playground.html").read_text(encoding="utf-8")
    assert "/v1/chat/completions" in page and "<script" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere: works offline


def test_the_playground_works_out_of_the_box_with_a_small_context(browser):
    """The page's default max tokens (200) is more than a 64-token model's context: it must not send it."""
    from generation_helpers import ByteTokenizer, tiny_model
    from selenium.webdriver.common.by import By

    from gptsmith.serve.app import ServerSettings
    from gptsmith.serve.server import ServerThread

    model = tiny_model(vocab_size=257, context_length=64)
    with ServerThread(model, ByteTokenizer(), ServerSettings(model_name="small")) as server:
        browser.get(server.url + "/")
        assert wait_until(lambda: "context 64" in browser.find_element(By.ID, "model").text, 10)
        assert int(browser.find_element(By.ID, "max-tokens").get_attribute("value")) <= 32
        browser.find_element(By.ID, "prompt").send_keys("Hello")
        browser.find_element(By.ID, "send").click()
        stats = browser.find_element(By.ID, "stats")
        assert wait_until(lambda: "token" in stats.text and "…" not in stats.text, 20)
        assert browser.find_element(By.ID, "error").text == ""  # was: max_tokens is 200 ... at most 64
