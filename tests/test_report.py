"""`leukolab report RUN_ID` on the shared smoke run: one HTML page, opened in headless Chromium, with the run's
stages, parameters, metrics, figures (the ROC and precision-recall curves among them) and executed notebooks; the
page is attached to the run's MLflow parent run, whose tag names it."""

from __future__ import annotations

import json

import pytest
from conftest import PAGE_TIMEOUT, keep_screenshot, leukolab, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(smoke_run):
    workspace, _ = smoke_run
    result = leukolab(workspace, "report", "smoke-1", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    page = workspace / "runs" / "smoke-1" / "report.html"
    assert result.stdout.strip() == f"report: {page}"
    return workspace, page


@pytest.mark.timeout(300)
def test_the_report_opens_in_a_browser_with_every_part(report, browser, tmp_path):
    from selenium.webdriver.common.by import By

    _, page = report
    browser.get(page.as_uri())
    wait_until(browser, lambda d: d.find_elements(By.ID, "notebooks"), PAGE_TIMEOUT, "the report page")
    assert browser.title == "leukolab run smoke-1"
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert headings == ["Stages", "Parameters", "Metrics", "Figures", "Notebooks"]
    stages = browser.find_element(By.ID, "stages").text
    assert all(task in stages for task in ("etl", "segment-unet-mobilenet", "classify-simple-cnn", "publish"))
    assert "classify-simple-cnn epochs" in browser.find_element(By.ID, "parameters").text.replace("\n", " ")
    assert "macro_f1" in browser.find_element(By.ID, "metrics").text
    captions = [c.text for c in browser.find_elements(By.TAG_NAME, "figcaption")]
    assert {"evaluation/roc.png", "evaluation/precision_recall.png"} <= set(captions), captions
    loaded = browser.execute_script("return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
    assert loaded == len(captions), "every figure is embedded and decodes"
    folds = browser.find_elements(By.CSS_SELECTOR, "#notebooks details")
    assert len(folds) == 6 and "etl (done)" in folds[0].text, [f.text for f in folds]
    folds[0].find_element(By.TAG_NAME, "summary").click()
    browser.switch_to.frame(folds[0].find_element(By.TAG_NAME, "iframe"))
    wait_until(browser, lambda d: "raw folder:" in d.find_element(By.TAG_NAME, "body").text, 30,
               "the executed notebook, with its outputs, inside the report")
    assert "00 · ETL" in browser.find_element(By.TAG_NAME, "body").text
    browser.switch_to.default_content()
    keep_screenshot(browser, tmp_path, "run-report.png")


def test_the_mlflow_parent_run_links_to_the_report(report):
    from mlflow.tracking import MlflowClient

    workspace, page = report
    lineage = json.loads((page.parent / "lineage.json").read_text())
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")  # the smoke run's own store
    parent = client.get_run(lineage["mlflow_parent_run_id"])
    assert parent.data.tags["leukolab.report"] == "report/report.html"
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "report")] == ["report/report.html"]
