"""The compose stack brought up for real with a Docker engine (``make test-stack``; not part of ``make test``).

``docker/build-images.sh`` (which ``make test-stack`` runs first) builds the two images, with local stand-ins for
the registry's base images where no registry is reachable. Then, in file order, on free host ports of 127.0.0.1
under a compose project of its own: mlflow, jupyter, api, voila and prometheus come up (grafana is left out: it has
no offline stand-in); the smoke pipeline runs inside the jupyter container against the ``mlflow`` service and
publishes a champion; the api container, started before there was one, swaps it in and answers ``/predict`` from
the host; Prometheus shows the api target up and counts its requests; the Voila page loads in headless Chromium;
``docker compose down -v`` leaves no container, volume or network behind. Every wait is bounded; a failure shows
``compose ps`` and every service's log.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import PAGE_TIMEOUT, ROOT, wait_until
from stack_files import env_file

from leukolab.processes.background import free_port

pytestmark = [pytest.mark.stack, pytest.mark.integration, pytest.mark.timeout(1500)]

SERVICES = ("mlflow", "jupyter", "api", "voila", "prometheus")
IMAGES = ("leukolab-workspace:latest", "leukolab-api:latest")
PORTS = ("MLFLOW_PORT", "JUPYTER_PORT", "API_PORT", "VOILA_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT",
         "SPARK_UI_PORT", "SPARK_WORKER_UI_PORT")
POLL_SECONDS = 5
"""How often the api resolves the champion alias in this test."""


@dataclass
class Stack:
    compose_binary: Path
    env: Path
    project: str
    ports: dict[str, int]
    champion: str = ""
    """The registered version the pipeline made champion."""

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """``docker compose`` of this project from the repository root, with none of this shell's settings."""
        clean = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(self.env.parent)}
        clean |= {key: os.environ[key] for key in ("DOCKER_HOST",) if key in os.environ}
        result = subprocess.run([str(self.compose_binary), "--env-file", str(self.env), "-p", self.project, *args],
                                cwd=ROOT, env=clean, capture_output=True, text=True, timeout=timeout)
        assert not check or result.returncode == 0, f"compose {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def url(self, port: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}"

    def health(self) -> dict[str, str]:
        """Each service's container state: its health when it has a check, else running/exited."""
        rows = self.compose("ps", "-a", "--format", "json").stdout
        rows = [json.loads(line) for line in rows.splitlines() if line.strip()]
        return {row["Service"]: row.get("Health") or row["State"] for row in rows}

    def logs(self) -> str:
        """``compose ps`` and the last lines of every service's log: what a failed step shows."""
        ps = self.compose("ps", "-a", check=False, timeout=60)
        logs = self.compose("logs", "--no-color", "--tail=120", check=False, timeout=120)
        return f"--- compose ps\n{ps.stdout}{ps.stderr}\n--- compose logs\n{logs.stdout[-30000:]}{logs.stderr}"


@contextmanager
def shown_on_failure(stack: Stack):
    """Re-raises a failed step's error with the stack's state and logs appended."""
    try:
        yield
    except Exception as error:
        raise AssertionError(f"{error}\n\n{stack.logs()}") from error


def poll(what: str, check, seconds: float, interval: float = 2.0):
    """``check()`` until it returns something truthy; an ``AssertionError`` after ``seconds`` with the last value."""
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        try:
            if last := check():
                return last
        except httpx.HTTPError as error:
            last = error
        time.sleep(interval)
    raise AssertionError(f"{what} not seen within {seconds:.0f} s (last: {last!r})")


def docker_cli() -> str:
    docker = shutil.which("docker") or "/usr/bin/docker"
    if subprocess.run([docker, "info"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("no Docker engine answers here (make test-stack starts one where it can: docker/engine.sh)")
    return docker


@pytest.fixture(scope="module")
def stack(check_tools, tmp_path_factory):
    """The stack's five services up on free ports under a project of their own; ``down -v`` afterwards."""
    docker = docker_cli()
    missing = [image for image in IMAGES if subprocess.run([docker, "image", "inspect", image], capture_output=True).returncode]
    assert not missing, f"{missing} not built: run `make test-stack` (docker/build-images.sh builds them)"
    ports = {name: free_port() for name in PORTS}
    env = env_file(tmp_path_factory.mktemp("stack"), **{name: str(port) for name, port in ports.items()},
                   LEUKOLAB_MODEL_POLL_SECONDS=str(POLL_SECONDS))
    stack = Stack(check_tools["compose"], env, f"leukolab-stack-{uuid.uuid4().hex[:8]}", ports)
    try:
        with shown_on_failure(stack):
            stack.compose("up", "-d", "--no-build", *SERVICES, timeout=300)
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "30", check=False, timeout=300)


def test_services_come_up_healthy(stack):
    """All but the api are healthy at once; the api runs but is not ready: there is no champion yet."""
    with shown_on_failure(stack):
        waiting = ("mlflow", "jupyter", "voila", "prometheus")
        poll("mlflow, jupyter, voila and prometheus healthy",
             lambda: all(stack.health().get(name) == "healthy" for name in waiting), 300)
        assert stack.health()["api"] in {"starting", "unhealthy"}
        poll("the api answering /ready with 503 (up, no champion to load)",  # its port opens a little later
             lambda: httpx.get(f"{stack.url('API_PORT')}/ready", timeout=10, trust_env=False).status_code == 503, 120)


def test_smoke_pipeline_in_the_jupyter_container_publishes_a_champion(stack):
    with shown_on_failure(stack):
        run = stack.compose("exec", "-T", "-e", "LEUKOLAB_WORKSPACE=/tmp/workspace", "jupyter",
                            "leukolab", "run", "--profile", "smoke", "--run-id", "stack", timeout=1200, check=False)
        assert run.returncode == 0, f"the smoke pipeline failed:\n{run.stdout[-5000:]}\n{run.stderr[-5000:]}"
        champion = stack.compose("exec", "-T", "jupyter", "python", "-c",
                                 "from mlflow import MlflowClient; "
                                 "print(MlflowClient().get_model_version_by_alias('leukolab', 'champion').version)")
        stack.champion = champion.stdout.strip().splitlines()[-1]
        assert stack.champion.isdigit(), champion.stdout


def smear_jpeg() -> bytes:
    """A synthetic smear (the project's generator) as JPEG bytes."""
    import numpy as np
    from PIL import Image

    from leukolab.data.synthetic.smears import render_smear

    image, _ = render_smear(np.random.default_rng(0), "Pre", size=96)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG")
    return buffer.getvalue()


def api_token(stack: Stack) -> dict[str, str]:
    """The bearer header of the env file's LEUKOLAB_API_TOKEN, which /version and /predict want."""
    settings = dict(line.split("=", 1) for line in stack.env.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {"Authorization": f"Bearer {settings['LEUKOLAB_API_TOKEN']}"}


def test_api_swaps_in_the_champion_and_predicts_from_the_host(stack):
    api, auth = stack.url("API_PORT"), api_token(stack)
    with shown_on_failure(stack):
        poll("the api container healthy with the champion", lambda: stack.health()["api"] == "healthy",
             POLL_SECONDS + 240)
        version = httpx.get(f"{api}/version", headers=auth, timeout=10, trust_env=False).json()
        assert str(version["version"]) == stack.champion, version
        for _ in range(3):
            answer = httpx.post(f"{api}/predict", files={"file": ("smear.jpg", smear_jpeg(), "image/jpeg")},
                                headers=auth, timeout=120, trust_env=False)
            assert answer.status_code == 200, answer.text
            assert answer.json()["decision"] in {"accept", "refer"}, answer.json()
        refused = httpx.post(f"{api}/predict", files={"file": ("notes.txt", b"not an image")}, headers=auth, timeout=60,
                             trust_env=False)
        assert refused.status_code == 415, refused.text


def prometheus_query(url: str, query: str) -> list[dict]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=10, trust_env=False).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_prometheus_scrapes_the_api_and_counts_its_requests(stack):
    url = stack.url("PROMETHEUS_PORT")
    with shown_on_failure(stack):
        def api_target_up():
            targets = httpx.get(f"{url}/api/v1/targets", timeout=10, trust_env=False).json()["data"]["activeTargets"]
            return [t for t in targets if t["labels"]["job"] == "leukolab-api" and t["health"] == "up"]

        poll("the leukolab-api target up in Prometheus", api_target_up, 120)

        def predictions_counted():
            result = prometheus_query(url, 'sum(leukolab_requests_total{job="leukolab-api", route="/predict"})')
            return result and float(result[0]["value"][1]) >= 4 and result

        poll("the api's /predict requests counted in Prometheus", predictions_counted, 120)


def test_voila_page_loads_in_a_browser(stack, browser):
    from selenium.webdriver.common.by import By

    with shown_on_failure(stack):
        browser.get(f"{stack.url('VOILA_PORT')}/")
        wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "button.widget-upload"), PAGE_TIMEOUT,
                   "the demo's upload button")
        assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text


def test_down_removes_containers_volumes_and_networks(stack):
    docker = docker_cli()
    with shown_on_failure(stack):
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "30", timeout=300)
    label = f"label=com.docker.compose.project={stack.project}"
    for kind in (["ps", "-a"], ["volume", "ls"], ["network", "ls"]):
        left = subprocess.run([docker, *kind, "-q", "--filter", label], capture_output=True, text=True, timeout=60)
        assert left.returncode == 0 and not left.stdout.strip(), f"docker {' '.join(kind)} after down: {left.stdout}"
