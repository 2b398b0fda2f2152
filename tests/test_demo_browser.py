"""The Voila demo in a real browser: Voila on 127.0.0.1, headless Debian Chromium driven by Selenium.

The page runs ``notebooks/demo.ipynb`` against the registered test model (in
the kernel's process, no API) in a version tagged ``referral_threshold=1.0``
(``LEUKOLAB_MODEL_URI``), so it refers every image. The test uploads a smear
through the FileUpload widget, presses Predict, and checks that the referral
message (confidence and threshold, no class) and the probability chart (no
class in red) appear; that the "Show where the model looked" toggle adds the
heatmap; then that an unreadable file gives a message, not a traceback. A second page runs the smoke pipeline's
champion, whose out-of-distribution check refers a greyscale field and says so in words. The
screenshots go to the test's folder and ``runs/test-artifacts/``.
Chromium and chromedriver come from ``docker/install-check-tools.sh``.
"""

from __future__ import annotations

import base64
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PAGE_TIMEOUT, ROOT, background_server, keep_screenshot, wait_until
from PIL import Image

from leukolab.processes.background import free_port

PREDICT_TIMEOUT = 90
TAB_RED = np.array([214, 39, 40])
"""matplotlib's tab:red, the predicted class's bar (none when referred)."""
TAB_GREY = np.array([127, 127, 127])
"""matplotlib's tab:grey, the other bars."""

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def voila(model_env, referring_model, tmp_path_factory):
    """The demo notebook served by Voila on 127.0.0.1, with the registered test model's referring version; its URL."""
    log_path = tmp_path_factory.mktemp("voila") / "voila.log"
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LEUKOLAB_MODEL_URI": referring_model["uri"]}
    env.pop("LEUKOLAB_API_URL", None)
    url = f"http://127.0.0.1:{port}/"
    command = [str(Path(sys.executable).parent / "voila"), str(ROOT / "notebooks" / "demo.ipynb"), "--no-browser",
               f"--port={port}", "--Voila.ip=127.0.0.1"]
    with background_server(command, env, f"{url}api/kernelspecs", log_path):
        yield {"url": url, "log": log_path}


ATTACH_FILE_INPUTS = """
// ipywidgets' FileUpload button clicks a file <input> it never attaches to the page, which opens the browser's file
// dialog. Instead, attach the input to the page, where Selenium can type a path into it as a person picks a file.
HTMLInputElement.prototype.click = function () {
  if (this.type === "file" && !this.isConnected) document.body.appendChild(this);
};
"""


def choose_file(driver, path: Path) -> None:
    """Press the upload button and pick ``path`` in the file input it opens."""
    from selenium.webdriver.common.by import By

    driver.execute_script(ATTACH_FILE_INPUTS)
    driver.find_element(By.CSS_SELECTOR, "button.widget-upload").click()
    driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(path))


def image_pixels(driver, element) -> np.ndarray:
    """The pixels an <img> shows, read back through a canvas."""
    data_url = driver.execute_script(
        "const img = arguments[0], canvas = document.createElement('canvas');"
        "canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;"
        "canvas.getContext('2d').drawImage(img, 0, 0); return canvas.toDataURL('image/png');", element)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def test_demo_refers_an_uploaded_image_in_a_real_browser(voila, browser, model_env, tmp_path):
    from selenium.webdriver.common.by import By

    smear = tmp_path / "smear.jpg"
    smear.write_bytes(model_env["example_image"])
    browser.get(voila["url"])
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "button.widget-upload"), PAGE_TIMEOUT, "the upload button")
    choose_file(browser, smear)
    wait_until(browser, lambda d: "(1)" in d.find_element(By.CSS_SELECTOR, ".widget-upload").text, 30, "the upload")
    browser.find_element(By.XPATH, "//button[contains(., 'Predict')]").click()

    def answered(driver):  # "Refer to a haematologist: confidence NN.N% is under the referral threshold 100.0% · ..."
        text = driver.find_element(By.TAG_NAME, "body").text
        return "Refer to a haematologist: confidence" in text and text
    text = wait_until(browser, answered, PREDICT_TIMEOUT, "a referral")
    assert "is under the referral threshold 100.0%" in text and "mask covers" in text, text
    assert not [name for name in model_env["class_names"] if f"{name}, confidence" in text], text
    picture = wait_until(browser, lambda d: [img for img in d.find_elements(By.CSS_SELECTOR, ".widget-image")
                                             if img.is_displayed() and d.execute_script("return arguments[0].naturalWidth", img)],
                         30, "the result picture")[0]
    pixels = image_pixels(browser, picture)
    chart = pixels[:, pixels.shape[1] // 2:]  # the right half: the probability bars
    red_bar, grey_bars = (np.all(np.abs(chart.astype(int) - colour) < 12, axis=-1).sum() for colour in (TAB_RED, TAB_GREY))
    assert grey_bars > 200 * len(model_env["class_names"]) and red_bar < 20, (
        f"a referral charts every class in grey, none in red ({grey_bars} tab:grey, {red_bar} tab:red pixels)")
    assert "Traceback" not in text

    print(f"screenshot: {keep_screenshot(browser, tmp_path, 'demo-browser.png')}; {text.splitlines()[-1]}")

    # The toggle redraws the answer with the heatmap beside the mask: one more panel, so a wider picture.
    width = browser.execute_script("return arguments[0].naturalWidth", picture)
    browser.find_element(By.XPATH, "//button[contains(., 'Show where the model looked')]").click()
    wait_until(browser, lambda d: "heatmap: Grad-CAM" in d.find_element(By.TAG_NAME, "body").text, PREDICT_TIMEOUT, "the heatmap")
    wait_until(browser, lambda d: d.execute_script("return arguments[0].naturalWidth", picture) > width, 30,
               "the picture with the heatmap")
    browser.find_element(By.XPATH, "//button[contains(., 'Show where the model looked')]").click()  # off again
    wait_until(browser, lambda d: "heatmap: Grad-CAM" not in d.find_element(By.TAG_NAME, "body").text, PREDICT_TIMEOUT,
               "the answer without the heatmap")

    # An unreadable file: a message on the page, the picture hidden, no traceback.
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"this is not an image")
    choose_file(browser, notes)
    time.sleep(5)  # the button still says "(1)": give the widget time to send the new file to the kernel (slow under load)
    browser.find_element(By.XPATH, "//button[contains(., 'Predict')]").click()
    text = wait_until(browser, lambda d: "Could not predict" in (body := d.find_element(By.TAG_NAME, "body").text) and body,
                      PREDICT_TIMEOUT, "the error message")
    assert "not an image" in text and "Traceback" not in text
    assert not picture.is_displayed()


@pytest.fixture(scope="module")
def champion_voila(smoke_run, tmp_path_factory):
    """The demo served by Voila with the smoke run's champion (which carries an out-of-distribution check); its URL."""
    workspace, _ = smoke_run
    log_path = tmp_path_factory.mktemp("voila-champion") / "voila.log"
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LEUKOLAB_WORKSPACE": str(workspace),
           "LEUKOLAB_MODEL_URI": "models:/leukolab@champion"}
    for name in ("LEUKOLAB_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    url = f"http://127.0.0.1:{port}/"
    command = [str(Path(sys.executable).parent / "voila"), str(ROOT / "notebooks" / "demo.ipynb"), "--no-browser",
               f"--port={port}", "--Voila.ip=127.0.0.1"]
    with background_server(command, env, f"{url}api/kernelspecs", log_path):
        yield url


def test_demo_says_an_image_of_another_kind_is_out_of_distribution(champion_voila, browser, tmp_path):
    from selenium.webdriver.common.by import By

    from leukolab.data.synthetic.shift import shifted_images

    grey = tmp_path / "greyscale.jpg"
    Image.fromarray(next(shifted_images("greyscale", 1, 64, seed=3))).save(grey, quality=95)
    browser.get(champion_voila)
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "button.widget-upload"), PAGE_TIMEOUT, "the upload button")
    choose_file(browser, grey)
    wait_until(browser, lambda d: "(1)" in d.find_element(By.CSS_SELECTOR, ".widget-upload").text, 30, "the upload")
    browser.find_element(By.XPATH, "//button[contains(., 'Predict')]").click()
    referred = "Refer to a haematologist: out of distribution"  # the page's description mentions the words too
    text = wait_until(browser, lambda d: referred in (body := d.find_element(By.TAG_NAME, "body").text) and body,
                      PREDICT_TIMEOUT, "an out-of-distribution referral")
    assert "not to be trusted" in text, text
    assert "Traceback" not in text
    print(f"screenshot: {keep_screenshot(browser, tmp_path, 'demo-browser-ood.png')}")
