"""MLflow's server and JupyterLab started with the exact command lines of their compose services (paths and
addresses moved to this machine): MLflow accepts the Host header services send it and stores artifacts, JupyterLab
opens on the notebooks and only with the token."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, status_of
from stack_files import env_file, resolved

from leukolab.processes.background import Background, free_port, wait_until_ready


@pytest.mark.integration
def test_mlflow_service_command_runs_behind_basic_auth_and_accepts_service_names(tools, tmp_path, monkeypatch):
    """The mlflow service's command line, paths moved to a temporary folder and on 127.0.0.1, with this MLflow: 401
    without the .env credentials, 200 with them, and no secret in its log."""
    service = resolved(tools, env_file(tmp_path))["services"]["mlflow"]
    environment = service["environment"]
    port = free_port()
    local = {"sqlite:////mlflow/db/": f"sqlite:///{tmp_path}/", "/mlflow/artifacts": str(tmp_path / "artifacts"),
             "--host=0.0.0.0": "--host=127.0.0.1", "--port=5000": f"--port={port}"}
    command = []
    for arg in service["command"]:
        for old, new in local.items():
            arg = arg.replace(old, new)
        command.append(arg)
    assert command[:2] == ["mlflow", "server"] and "--app-name=basic-auth" in command
    mounts = {volume["target"]: Path(volume["source"]) for volume in service["volumes"] if volume["type"] == "bind"}
    auth_config = Path(environment["MLFLOW_AUTH_CONFIG_PATH"])
    local_config = tmp_path / "basic_auth.ini"
    local_config.write_text((mounts[str(auth_config.parent)] / auth_config.name).read_text()
                            .replace("sqlite:////mlflow/db/", f"sqlite:///{tmp_path}/"))
    log = tmp_path / "mlflow.log"
    server = Background.start([sys.executable, "-m", *command], log, "the mlflow service", append=False, own_group=True,
                              env={**os.environ, **environment, "MLFLOW_AUTH_CONFIG_PATH": str(local_config)},
                              grace=15)
    url = f"http://127.0.0.1:{port}"
    user, password = environment["MLFLOW_AUTH_ADMIN_USERNAME"], environment["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert password == "test-only-mlflow_tracking_password"  # from .env, nowhere else
    try:
        # open: the health check needs no credentials
        wait_until_ready(lambda: status_of(f"{url}/health") == 200, [server], 120, interval=0.3)
        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        for credentials in (None, (user, "wrong-password"), ("nobody", password)):
            assert httpx.get(url + search, auth=credentials, trust_env=False).status_code == 401, credentials
        for host in ("mlflow:5000", "mlflow", f"localhost:{port}"):
            response = httpx.get(url + search, headers={"Host": host}, auth=(user, password), trust_env=False)
            assert response.status_code == 200, host
        response = httpx.get(url + search, headers={"Host": "attacker.example"}, auth=(user, password), trust_env=False)
        assert response.status_code in (400, 403)
        from mlflow.tracking import MlflowClient

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)  # what the clients in compose are given
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        client = MlflowClient(tracking_uri=url, registry_uri=url)
        run = client.create_run(client.create_experiment("stack-check"))
        client.log_text(run.info.run_id, "served through the tracking server", "note.txt")
        assert list((tmp_path / "artifacts").rglob("note.txt")), "artifacts are not stored by the server"
    finally:
        server.stop()
    text = log.read_text(errors="replace")
    assert password not in text and environment["MLFLOW_FLASK_SERVER_SECRET_KEY"] not in text


@pytest.mark.integration
def test_jupyter_service_command_opens_the_notebooks_behind_the_token(tools, tmp_path):
    """The jupyter service's command line on 127.0.0.1, with this checkout where the container mounts it."""
    service = resolved(tools, env_file(tmp_path))["services"]["jupyter"]
    port = free_port()
    local = {"--ip=0.0.0.0": "--ip=127.0.0.1", "--port=8888": f"--port={port}", "=/opt/leukolab": f"={ROOT}"}
    command = []
    for arg in service["command"]:
        for old, new in local.items():
            arg = arg.replace(old, new)
        command.append(arg)
    assert command[:2] == ["jupyter", "lab"] and f"--ServerApp.root_dir={ROOT}" in command
    command += ["--allow-root"] if os.geteuid() == 0 else []  # the container runs as a user
    token = service["environment"]["JUPYTER_TOKEN"]
    log = tmp_path / "jupyter.log"
    server = Background.start([str(Path(sys.executable).parent / "jupyter"), *command[1:]], log, "the jupyter service",
                              append=False, own_group=True, grace=15,
                              env={**os.environ, "JUPYTER_TOKEN": token, "HOME": str(tmp_path / "home")})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(lambda: status_of(f"{url}/api/status?token={token}") == 200, [server], 90, interval=0.3)
        landing = httpx.get(f"{url}/?token={token}", trust_env=False)
        assert landing.status_code == 302 and landing.headers["location"].startswith("/lab/tree/notebooks")
        listing = httpx.get(f"{url}/api/contents/notebooks", params={"token": token}, trust_env=False)
        assert listing.status_code == 200 and "demo.ipynb" in {item["name"] for item in listing.json()["content"]}
        assert httpx.get(f"{url}/api/contents/notebooks", trust_env=False).status_code == 403
    finally:
        server.stop()
