"""The web chat page at / in a real headless browser (the system's chromium, driven by selenium)."""
from __future__ import annotations

import shutil
import time

import pytest

from serve_helpers import API_KEY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromedriver (apt: chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,800"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def wait(predicate, timeout=180.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _set(driver, element_id, value):
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('settings').open = true")
    box = driver.find_element(By.ID, element_id)
    box.clear()
    box.send_keys(str(value))
    driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", box)


def _send(driver, text):
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "input").send_keys(text)
    driver.find_element(By.ID, "send").click()


def _last_answer(driver):
    from selenium.webdriver.common.by import By

    answers = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")
    return answers[-1] if answers else None


def test_chat_stream_stop_and_reload(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.base + "/")  # the page itself needs no key; it sends the one set in its settings
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    _set(browser, "set-key", API_KEY)
    _set(browser, "set-budget", 3)
    _set(browser, "set-max-tokens", 24)
    _set(browser, "set-temperature", 0.7)

    # 1. A message: the thinking block (collapsed, apart from the answer), streamed text, stats.
    _send(browser, "Hello there")
    wait(lambda: "generated" in (_last_answer(browser).find_element(By.CSS_SELECTOR, ".stats").text
                                 if _last_answer(browser) and _last_answer(browser).find_elements(By.CSS_SELECTOR, ".stats")
                                 else ""), what="the answer's stats")
    answer = _last_answer(browser)
    thinking = answer.find_element(By.CSS_SELECTOR, "details.thinking")
    assert thinking.get_attribute("open") is None          # collapsed
    assert browser.execute_script("return arguments[0].querySelector('.thinking-text').textContent", answer)
    content = answer.find_element(By.CSS_SELECTOR, ".content").text
    stats = answer.find_element(By.CSS_SELECTOR, ".stats").text
    assert content and "prompt" in stats and "cached" in stats and "tok/s" in stats

    # 2. A long answer, stopped from the page: the server cancels the generation.
    cancelled = server.metrics().get("hybrid_k2_requests_cancelled_total", 0)
    _set(browser, "set-max-tokens", 100000)
    _set(browser, "set-budget", "")
    _send(browser, "Tell me a long story")
    wait(lambda: len(browser.execute_script("return document.querySelector('.msg.assistant:last-child .thinking-text')"
                                            "?.textContent || ''")) > 5, what="streamed thinking")
    browser.find_element(By.ID, "stop").click()
    wait(lambda: "stopped" in _last_answer(browser).text, what="the stopped answer")
    wait(lambda: server.metrics().get("hybrid_k2_requests_cancelled_total", 0) > cancelled, timeout=30,
         what="the server to cancel the generation")
    assert browser.find_element(By.ID, "send").is_enabled()

    # 3. Reload: the conversation is still there, from the browser's storage.
    browser.refresh()
    wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".msg")) == 4, what="the restored conversation")
    texts = [m.text for m in browser.find_elements(By.CSS_SELECTOR, ".msg.user")]
    assert texts == ["Hello there", "Tell me a long story"]
    assert _last_answer(browser).find_elements(By.CSS_SELECTOR, ".stats")
    assert browser.find_element(By.CSS_SELECTOR, "#conv-list li.active").text == "Hello there"


def test_page_is_served_without_a_key_and_the_api_still_needs_one(server):
    import httpx

    page = httpx.get(server.base + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" in page.text and "http://" not in page.text.split("<script>")[1]  # nothing fetched from elsewhere
    assert httpx.post(server.base + "/v1/chat/completions", json={}).status_code == 401
