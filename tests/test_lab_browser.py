"""JupyterLab and the MLflow UI as a newcomer sees them, in headless Debian Chromium driven by Selenium.

Each server is started by the ``leukolab`` subcommand that `make lab` and `make mlflow-ui` run (``leukolab lab``,
``leukolab mlflow-ui``), on 127.0.0.1 and a free port. JupyterLab opens a copy of ``00_etl.ipynb`` in a temporary
folder (so the committed notebook is never saved with outputs), behind a token and on a temporary workspace; the
test checks the kernel it shows and runs the parameters cell and the set-up cell after it. The MLflow UI opens the
smoke run's store (conftest's ``smoke_run``) and must show the pipeline's parent run with its stage runs under it.
Screenshots go to each test's folder and ``runs/test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys

import httpx
import psutil
import pytest
from conftest import ROOT, background_server, keep_screenshot, wait_until

from leukolab.processes.background import free_port

pytestmark = pytest.mark.integration
KERNEL_TIMEOUT = 60
"""Seconds for JupyterLab to start the notebook's kernel."""
CELL_TIMEOUT = 90
"""Seconds for the set-up cell (it imports the library, MLflow and opens the stage's MLflow run)."""
ERROR_OUTPUT = '.jp-RenderedText[data-mime-type="application/vnd.jupyter.error"]'
STDERR_OUTPUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
INFO_LOG_LINE = re.compile(r"^[\d/:. ]+ (DEBUG|INFO) [\w.]+: ")
"""A log record under WARNING, in the library's format or MLflow's (``2026/01/01 12:00:00 INFO mlflow.store...: ``):
the only stderr a clean run may show (MLflow creating a new workspace's store, for one)."""


def leukolab_command(*args: str) -> list[str]:
    """``leukolab ARGS`` with this environment's Python and the library on PYTHONPATH, as `make` runs it."""
    return [sys.executable, "-m", "leukolab.cli", *args]


@pytest.mark.timeout(300)
def test_jupyterlab_opens_the_etl_notebook_on_the_leukolab_kernel_and_runs_it(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    notebooks, workspace, jupyter = (tmp_path / name for name in ("notebooks", "workspace", "jupyter"))
    notebooks.mkdir()
    shutil.copy(ROOT / "notebooks" / "00_etl.ipynb", notebooks)
    token, port = secrets.token_hex(16), free_port()
    env = {**os.environ, "JUPYTER_TOKEN": token, "LEUKOLAB_WORKSPACE": str(workspace), "HF_HUB_OFFLINE": "1",
           "JUPYTER_CONFIG_DIR": str(jupyter / "config"), "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime")}
    env.pop("MLFLOW_TRACKING_URI", None)
    url = f"http://127.0.0.1:{port}/"
    command = leukolab_command("lab", "--port", str(port), "--notebook-dir", str(notebooks), "--no-browser")
    with background_server(command, env, f"{url}api", tmp_path / "jupyter.log"):
        assert httpx.get(f"{url}api/contents", timeout=10, trust_env=False).status_code == 403, "no token, no notebooks"
        browser.get(f"{url}lab/tree/00_etl.ipynb?token={token}")
        wait_until(browser, lambda d: "Python (leukolab) | Idle" in d.find_element(By.ID, "jp-main-statusbar").text,
                   KERNEL_TIMEOUT, "the kernel Python (leukolab), idle, in the status bar")
        assert browser.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-KernelName").text == "Python (leukolab)"

        cells = browser.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")
        parameters, setup = cells[:2]
        assert "run_dir = " in parameters.text and "notebook.setup()" in setup.text
        parameters.find_element(By.CSS_SELECTOR, ".jp-InputArea-prompt").click()
        for _ in range(2):  # run the selected cell and select the next one, as Shift+Enter does
            ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()

        def prompts(driver):
            texts = [cell.find_element(By.CSS_SELECTOR, ".jp-InputArea-prompt").text for cell in (parameters, setup)]
            return texts == ["[1]:", "[2]:"] and texts
        wait_until(browser, prompts, CELL_TIMEOUT, "both cells run")
        browser.execute_script("arguments[0].scrollIntoView()", setup)
        print(f"screenshot: {keep_screenshot(browser, tmp_path, 'lab-00_etl.png')}")
        errors = [output.text for output in browser.find_elements(By.CSS_SELECTOR, ERROR_OUTPUT)]
        stderr = [line for output in browser.find_elements(By.CSS_SELECTOR, STDERR_OUTPUT)
                  for line in output.text.splitlines() if not INFO_LOG_LINE.match(line)]
        assert not errors and not stderr, f"error output: {errors}; stderr other than INFO logs: {stderr}"
        assert setup.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output table"), "the set-up cell shows the parameters"
        assert (workspace / "mlflow.db").is_file(), "the kernel's MLflow store is the workspace it was started on"


@pytest.mark.timeout(240)
def test_mlflow_ui_shows_the_pipeline_run_with_its_stage_runs(smoke_run, browser, tmp_path):
    from selenium.webdriver.common.by import By

    workspace, _ = smoke_run
    parent_id = json.loads((workspace / "runs" / "smoke-1" / "lineage.json").read_text())["mlflow_parent_run_id"]
    port = free_port()
    env = {**os.environ, "LEUKOLAB_WORKSPACE": str(workspace)}
    env.pop("MLFLOW_TRACKING_URI", None)
    url = f"http://127.0.0.1:{port}/"
    with background_server(leukolab_command("mlflow-ui", "--port", str(port)), env, f"{url}health",
                           tmp_path / "mlflow.log", start_timeout=90) as server:
        api = f"{url}api/2.0/mlflow/"
        parent = httpx.get(f"{api}runs/get", params={"run_id": parent_id}, timeout=10, trust_env=False).json()["run"]["info"]
        stages = httpx.post(f"{api}runs/search", timeout=10, trust_env=False, json={
            "experiment_ids": [parent["experiment_id"]], "filter": f"tags.mlflow.parentRunId = '{parent_id}'"}).json()["runs"]
        assert len(stages) >= 6, f"the smoke run's stage runs: {[run['info']['run_name'] for run in stages]}"

        # MLflow 3 opens on its GenAI view; `workflowType=machine_learning` is its "Model training" switch.
        browser.get(f"{url}#/experiments/{parent['experiment_id']}/runs?workflowType=machine_learning")
        link = f"//a[contains(@href, '/runs/{parent_id}')]"
        wait_until(browser, lambda d: d.find_elements(By.XPATH, link), 90, "the pipeline run in the runs table")
        assert browser.find_element(By.XPATH, link).get_attribute("textContent") == parent["run_name"]
        assert not browser.find_elements(By.XPATH, f"//a[contains(@href, '/runs/{stages[0]['info']['run_id']}')]"), \
            "stage runs are folded under the pipeline run"
        browser.find_element(By.XPATH, f"{link}/ancestor::div[contains(@class, 'ag-cell-wrapper')]//button").click()

        def stage_links(driver):
            links = [driver.find_elements(By.XPATH, f"//a[contains(@href, '/runs/{run['info']['run_id']}')]") for run in stages]
            return all(links) and [found[0].get_attribute("textContent") for found in links]
        names = wait_until(browser, stage_links, 30, "every stage run under the pipeline run")
        assert sorted(names) == sorted(run["info"]["run_name"] for run in stages)
        print(f"screenshot: {keep_screenshot(browser, tmp_path, 'mlflow-ui-pipeline-run.png')}")

        processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        commands = [" ".join(process.cmdline()) for process in processes]
        assert len(processes) == 2 and not [c for c in commands if "huey" in c or "job_runner" in c], \
            f"the lean UI is the mlflow command and one uvicorn worker: {commands}"
