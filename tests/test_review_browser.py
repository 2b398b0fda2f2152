"""The review page in a real browser: ``notebooks/review.ipynb`` served by Voila on 127.0.0.1, headless Debian
Chromium driven by Selenium. One kept case (the registered test model's answer) is reviewed on the page: its class
chosen, the reviewer named, saved; the store then holds that review and the page says nothing is waiting."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from conftest import PAGE_TIMEOUT, ROOT, background_server, keep_screenshot, wait_until

from leukolab.processes.background import free_port
from leukolab.review.store import Answer, ReviewStore

pytestmark = pytest.mark.integration


def test_a_review_entered_on_the_voila_page_is_saved(model_env, browser, tmp_path):
    from selenium.webdriver.common.by import By

    store = ReviewStore(tmp_path / "review")
    probabilities = dict(zip(model_env["class_names"], (0.1, 0.2, 0.4, 0.3)))
    digest = store.keep(model_env["example_image"], Answer("refer", "low_confidence", "Pre", 0.4, probabilities,
                                                           "leukolab", model_env["version"]), "api").hash
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LEUKOLAB_REVIEW_DIR": str(store.folder)}
    command = [str(Path(sys.executable).parent / "voila"), str(ROOT / "notebooks" / "review.ipynb"), "--no-browser",
               f"--port={port}", "--Voila.ip=127.0.0.1"]
    url = f"http://127.0.0.1:{port}/"
    with background_server(command, env, f"{url}api/kernelspecs", tmp_path / "voila.log"):
        browser.get(url)
        wait_until(browser, lambda d: d.find_elements(By.XPATH, "//button[contains(., 'Save and next')]"), PAGE_TIMEOUT,
                   "the review page")
        text = browser.find_element(By.TAG_NAME, "body").text
        assert "referred it: low_confidence" in text and "0 of 1 reviewed" in text and "no heatmap" not in text, text
        browser.find_element(By.XPATH, "//button[contains(@class, 'widget-toggle-button') and contains(., 'Early')]").click()
        browser.find_element(By.CSS_SELECTOR, ".widget-text input").send_keys("Dr Browser")
        browser.find_element(By.CSS_SELECTOR, ".widget-textarea textarea").send_keys("seen in a browser")
        time.sleep(1)  # let the widgets send the text to the kernel before the click
        browser.find_element(By.XPATH, "//button[contains(., 'Save and next')]").click()
        text = wait_until(browser, lambda d: "No case is waiting" in (body := d.find_element(By.TAG_NAME, "body").text)
                          and body, 60, "the review to be saved")
        print(f"screenshot: {keep_screenshot(browser, tmp_path, 'review-browser.png')}")
    assert "1 of 1 reviewed" in text and "Traceback" not in text
    assert [(r["hash"], r["label"], r["reviewer"], r["note"]) for r in store.latest_reviews()] == \
        [(digest, "Early", "Dr Browser", "seen in a browser")]
