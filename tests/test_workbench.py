"""The command lines `make lab` and `make mlflow-ui` run (``leukolab.workbench``); tests/test_lab_browser.py starts
them and looks at them in a browser."""

from __future__ import annotations

import sys

import pytest

from leukolab import workbench


@pytest.mark.parametrize("uid, allowed", [(0, True), (1000, False)])
def test_jupyterlab_is_allowed_to_run_as_root_only_when_it_is_root(monkeypatch, uid, allowed):
    monkeypatch.setattr(workbench.os, "geteuid", lambda: uid)
    command = workbench.lab_command()
    assert ("--allow-root" in command) is allowed
    assert command[:4] == [sys.executable, "-m", "jupyter", "lab"]
    assert f"--notebook-dir={workbench.NOTEBOOKS_DIR}" in command and "--ServerApp.ip=127.0.0.1" in command


def test_lab_opens_a_browser_unless_told_not_to():
    assert "--no-browser" not in workbench.lab_command()
    assert "--no-browser" in workbench.lab_command(open_browser=False)


def test_mlflow_ui_runs_one_worker_without_the_job_runner(monkeypatch, tmp_path):
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")
    command, env = workbench.mlflow_ui_command(port=5123)
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert command[command.index("--workers") + 1] == "1" and command[command.index("--port") + 1] == "5123"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false" and env["LEUKOLAB_WORKSPACE"] == str(tmp_path)
