"""The docker compose stack in docker/, checked without a Docker engine.

- The compose file resolves with Docker Compose v2's own parser (``docker compose config``) from the
  repository root with a copy of ``.env.example``, as the README tells a user to run it; it refuses to
  resolve without the secrets; services reach each other by the names and ports the other files use.
- The images: base images and third-party images pinned, the API non-root with a health check on
  ``/ready``, build contexts that never carry ``.env``, and an API requirement list that is enough: the
  API loads a model and predicts with every distribution outside that list hidden.
- MLflow's server and JupyterLab start with the exact command lines of their services (paths and
  addresses moved to this machine): MLflow accepts the Host header services send it and stores artifacts,
  JupyterLab opens on the notebooks and only with the token.
- ``promtool check config``/``check rules`` pass; every metric the dashboard and the alerts query is one
  the running API exports; a real Prometheus with the committed scrape config and alert rules, pointed at
  a real API, counts the predictions this test makes and runs every dashboard query.

The tools come from ``docker/install-check-tools.sh`` (``make stack-tools``), which the ``check_tools``
fixture runs (quick when all is there); the tests skip only when it says apt-get cannot be used here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "leukolab-api.json"
DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DOCKER / "grafana" / "provisioning" / "dashboards" / "leukolab.yml"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
ALERT_RULES = DOCKER / "prometheus" / "alerts.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILES = ["workspace.Dockerfile", "api.Dockerfile"]

SERVICES = {"jupyter", "mlflow", "api", "voila", "prometheus", "grafana"}
SPARK_SERVICES = {"spark-master", "spark-worker"}
SECRETS = ("JUPYTER_TOKEN", "GRAFANA_ADMIN_PASSWORD", "LEUKOLAB_API_TOKEN", "MLFLOW_TRACKING_PASSWORD",
           "MLFLOW_FLASK_SERVER_SECRET_KEY")
PROMETHEUS_SERIES = {"up"}
"""Series Prometheus makes itself, which queries may use beside the API's."""
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}
"""Grafana's built-in variables, as the real Prometheus test substitutes them."""


# --- tools -------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tools(check_tools) -> dict[str, Path]:
    """docker compose, BuildKit's Dockerfile parser, promtool and prometheus (docker/install-check-tools.sh)."""
    return {"compose": check_tools["compose"], "dockerfile": check_tools["dockerfile"],
            "promtool": Path(_which("promtool")), "prometheus": Path(_which("prometheus"))}


def _which(name: str) -> str:
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        if os.access(candidate := os.path.join(folder, name), os.X_OK):
            return candidate
    raise AssertionError(f"{name} is not on PATH after docker/install-check-tools.sh")


# --- compose -----------------------------------------------------------------------------------------

def env_file(tmp_path: Path, **settings: str) -> Path:
    """A copy of .env.example with the secrets filled in (test values) and ``settings`` applied."""
    values = {secret: f"test-only-{secret.lower()}" for secret in SECRETS} | settings
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        key = line.partition("=")[0]
        lines.append(f"{key}={values.pop(key)}" if key in values and not line.startswith("#") else line)
    lines += [f"{key}={value}" for key, value in values.items()]
    path = tmp_path / f"env-{len(list(tmp_path.glob('env-*')))}"
    path.write_text("\n".join(lines) + "\n")
    return path


def compose(tools: dict, env: Path, *args: str) -> subprocess.CompletedProcess:
    """``docker compose --env-file ENV ARGS`` from the repository root, with none of this shell's settings."""
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(env.parent)}
    return subprocess.run([str(tools["compose"]), "--env-file", str(env), *args], cwd=ROOT, env=clean,
                          capture_output=True, text=True, timeout=60)


def resolved(tools: dict, env: Path, *profiles: str) -> dict:
    """The compose project as compose resolves it (``config --format json``)."""
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = compose(tools, env, *args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.integration
def test_compose_file_resolves_from_the_root_with_env_example(tools, tmp_path):
    """The README's flow: `cp .env.example .env`, fill in the secrets, `docker compose ...` from the root."""
    env = env_file(tmp_path)
    for profiles in ([], ["--profile", "spark"]):
        result = compose(tools, env, *profiles, "config", "--quiet")
        assert result.returncode == 0, result.stderr
    assert set(resolved(tools, env)["services"]) == SERVICES
    assert set(resolved(tools, env, "spark")["services"]) == SERVICES | SPARK_SERVICES


@pytest.mark.integration
@pytest.mark.parametrize("secret", SECRETS)
def test_compose_refuses_to_run_without_each_secret(tools, tmp_path, secret):
    env = env_file(tmp_path, **{secret: ""})
    result = compose(tools, env, "config", "--quiet")
    assert result.returncode != 0
    assert f"set {secret} in .env" in result.stderr


@pytest.mark.integration
def test_compose_wiring(tools, tmp_path):
    project = resolved(tools, env_file(tmp_path), "spark")
    services = project["services"]

    for name, service in services.items():
        if "build" in service:
            dockerfile = Path(service["build"]["context"]) / service["build"]["dockerfile"]
            assert dockerfile.is_file() and Path(f"{dockerfile}.dockerignore").is_file(), name
        else:  # third-party images are pinned to a release
            repository, _, tag = service["image"].rpartition(":")
            assert repository and tag and tag != "latest" and "/" not in tag, service["image"]
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes on {port['host_ip']} by default"
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name} mounts {volume['source']}, which does not exist"
                assert Path(volume["source"]).resolve().is_relative_to(ROOT), volume["source"]

    mlflow_admin = services["mlflow"]["environment"]
    for name in ("jupyter", "api", "voila"):
        environment = services[name]["environment"]
        assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert environment["MLFLOW_TRACKING_USERNAME"] == mlflow_admin["MLFLOW_AUTH_ADMIN_USERNAME"]
        assert environment["MLFLOW_TRACKING_PASSWORD"] == mlflow_admin["MLFLOW_AUTH_ADMIN_PASSWORD"]
    # The API wants its token, the demo sends it; SIGKILL comes only after the API's drain deadline.
    assert services["api"]["environment"]["LEUKOLAB_API_TOKEN"] == services["voila"]["environment"]["LEUKOLAB_API_TOKEN"]
    assert float(services["api"]["environment"]["LEUKOLAB_DRAIN_SECONDS"]) + 5 <= grace_seconds(services["api"])
    assert "--port=5000" in services["mlflow"]["command"]
    assert services["voila"]["environment"]["LEUKOLAB_API_URL"] == "http://api:8000"
    assert services["api"]["command"][-2:] == ["--port", "8000"]
    assert any(port["target"] == 8000 for port in services["api"]["ports"])
    assert float(services["api"]["environment"]["LEUKOLAB_MODEL_POLL_SECONDS"]) > 0  # follows the champion, no restarts

    # MLflow keeps its SQLite store and its artifacts on two named volumes.
    mounts = {volume["target"]: volume for volume in services["mlflow"]["volumes"]}
    command = services["mlflow"]["command"]
    store = next(arg for arg in command if arg.startswith("--backend-store-uri=sqlite:////"))
    artifacts = next(arg for arg in command if arg.startswith("--artifacts-destination="))
    assert mounts[str(Path(store.removeprefix("--backend-store-uri=sqlite:///")).parent)]["type"] == "volume"
    assert mounts[artifacts.partition("=")[2]]["type"] == "volume"

    # Prometheus scrapes the api service on its port and reads the committed files.
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = [target for job in scrape["scrape_configs"] if job["job_name"] == "leukolab-api"
               for group in job["static_configs"] for target in group["targets"]]
    assert targets == ["api:8000"]
    config_mount = next(v for v in services["prometheus"]["volumes"] if v["type"] == "bind")
    assert Path(config_mount["source"]) == PROMETHEUS_CONFIG.parent
    assert f"--config.file={config_mount['target']}/prometheus.yml" in services["prometheus"]["command"]

    # Grafana: the provisioned data source is the prometheus service, dashboards come from the mounted JSON.
    grafana = services["grafana"]
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert any(port["target"] == 9090 for port in services["prometheus"]["ports"])
    binds = {Path(v["source"]): v["target"] for v in grafana["volumes"] if v["type"] == "bind"}
    assert binds[DOCKER / "grafana" / "provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"][0]
    assert binds[DASHBOARD.parent] == provider["options"]["path"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{provider['options']['path']}/{DASHBOARD.name}"

    # The Spark worker joins the master at its port; executors reach the driver in jupyter by name.
    master = services["spark-master"]["command"]
    assert services["spark-worker"]["command"][-1] == f"spark://spark-master:{master[master.index('--port') + 1]}"
    assert services["jupyter"]["hostname"] == "jupyter"
    assert services["spark-worker"]["volumes"] == services["jupyter"]["volumes"]


def grace_seconds(service: dict) -> float:
    """A service's ``stop_grace_period`` in seconds (compose's default: 10)."""
    period = service.get("stop_grace_period", "10s")
    return sum(float(amount) * {"h": 3600, "m": 60, "s": 1}[unit] for amount, unit in re.findall(r"([\d.]+)([hms])", period))


@pytest.mark.integration
@pytest.mark.parametrize("anonymous", ["false", "true"])
def test_grafana_has_no_default_password_and_anonymous_visitors_only_view(tools, tmp_path, anonymous):
    environment = resolved(tools, env_file(tmp_path, GRAFANA_ANONYMOUS_ENABLED=anonymous))["services"]["grafana"]["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] == "test-only-grafana_admin_password"  # from .env, nowhere else
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == anonymous
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert environment["GF_USERS_ALLOW_SIGN_UP"] == "false"


def test_committed_files_hold_no_secrets():
    """Secret-looking settings in docker/ and .env.example are empty or required from .env (``${VAR:?...}``)."""
    secret_setting = re.compile(r"""^\s*-?\s*["']?([\w.-]*(?:password|token|secret|api_key)[\w.-]*)["']?\s*[:=]\s*(.*)$""",
                                re.IGNORECASE)
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "docker", ".env.example"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files = [ROOT / name for name in listed if (ROOT / name).is_file()]  # committed or committable, not .env
    assert ENV_EXAMPLE in files and COMPOSE_FILE in files
    found = 0
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not (match := secret_setting.match(line)) or line.lstrip().startswith("#"):
                continue
            found += 1
            value = match[2].split(" #")[0].strip().rstrip(",").strip("'\"")
            assert value == "" or re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", value), f"{path}:{number}: {line.strip()}"
    assert found >= 3
    env_settings = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#"))
    assert all(env_settings[secret] == "" for secret in SECRETS)
    assert env_settings["COMPOSE_FILE"] == COMPOSE_FILE.relative_to(ROOT).as_posix()
    ignored = subprocess.run(["git", "check-ignore", "--no-index", ".env", "docker/.env"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    assert ignored == [".env", "docker/.env"], ".env must be git-ignored"


# --- images ------------------------------------------------------------------------------------------

def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether a .dockerignore's ``patterns`` keep ``path`` out of the build context (last match wins)."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]  # a matched folder takes its contents
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def ignore_patterns(dockerfile: str) -> list[str]:
    text = (DOCKER / f"{dockerfile}.dockerignore").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_build_contexts_never_carry_secrets_or_state(dockerfile):
    for secret_or_state in (".env", "docker/.env", ".git/config", "data/raw/x.jpg", "runs/r/lineage.json",
                            "mlflow.db", "mlartifacts/1/x", "lib/leukolab/__pycache__/x.pyc", "benchmarks/x.py"):
        assert dockerignore_excludes(ignore_patterns(dockerfile), secret_or_state), f"{dockerfile} would send {secret_or_state}"


@pytest.fixture(scope="session")
def parse_dockerfile(tools):
    """BuildKit's parser (the `dockerfile` package): a Dockerfile's name to its instructions."""
    sys.path.insert(0, str(tools["dockerfile"]))
    import dockerfile

    return lambda name: dockerfile.parse_file(str(DOCKER / name))


INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


@pytest.mark.integration
@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfiles_parse_and_copy_what_their_context_holds(parse_dockerfile, name):
    commands = parse_dockerfile(name)
    unknown = [(c.start_line, c.cmd) for c in commands if c.cmd.upper() not in INSTRUCTIONS]
    assert not unknown, f"{name}: not instructions (a broken line continuation?): {unknown}"
    by_name = lambda cmd: [c for c in commands if c.cmd.upper() == cmd]  # noqa: E731
    assert [c.value for c in by_name("FROM")] == [("python:3.11-slim-bookworm",)]
    assert ("TORCH_INDEX_URL=",) in [c.value for c in by_name("ARG")], "an empty TORCH_INDEX_URL: pip's default index"
    runs = "\n".join(c.value[0] for c in by_name("RUN"))
    # torch and torchvision from TORCH_INDEX_URL when given, at the versions requirements.txt pins
    pins = "\"$(grep -E '^torch==' /tmp/requirements.txt)\" \"$(grep -E '^torchvision==' /tmp/requirements.txt)\""
    index = '${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}'
    assert re.search(r"pip install " + re.escape(index) + r"\s+" + re.escape(pins), runs), runs
    assert "pip check" in runs
    patterns = ignore_patterns(name)
    for copy in by_name("COPY"):
        for source in copy.value[:-1]:
            if source.startswith("/"):
                continue
            assert (ROOT / source).exists(), f"{name}:{copy.start_line} copies {source}, which does not exist"
            assert not dockerignore_excludes(patterns, source.rstrip("/")), f"{name}'s context leaves out {source}"
    assert by_name("USER") and by_name("USER")[-1].value[0] not in {"root", "0"}, f"{name} runs as root"


@pytest.mark.integration
def test_api_image_serves_as_a_user_and_is_healthy_once_ready(parse_dockerfile):
    commands = {c.cmd.upper(): c for c in parse_dockerfile("api.Dockerfile")}
    healthcheck = commands["HEALTHCHECK"].value
    assert healthcheck[0] == "CMD" and "http://127.0.0.1:8000/ready" in healthcheck[-1]
    assert commands["ENTRYPOINT"].value == ("python", "-m", "leukolab.serving")
    assert commands["CMD"].value == ("--host", "0.0.0.0", "--port", "8000") and commands["EXPOSE"].value == ("8000",)
    runs = "\n".join(c.value[0] for c in parse_dockerfile("api.Dockerfile") if c.cmd.upper() == "RUN")
    # pip refuses constraints with extras: the API's are requirements.txt's pins without them.
    assert "sed -E 's/\\[[^]]*\\]//' /tmp/requirements.txt > /tmp/constraints.txt" in runs
    assert "pip install -r /tmp/requirements-api.txt -c /tmp/constraints.txt" in runs
    assert "pip install --no-deps ." in runs
    workspace = "\n".join(c.value[0] for c in parse_dockerfile("workspace.Dockerfile") if c.cmd.upper() == "RUN")
    assert "openjdk-17-jre-headless" in workspace and "pip install -r /tmp/requirements.txt" in workspace


def requirement_names(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_api_requirements_are_names_that_requirements_txt_pins():
    pins = {normalize(line.split("==")[0]) for line in requirement_names(ROOT / "requirements.txt")}
    for name in requirement_names(DOCKER / "requirements-api.txt"):
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", name), f"{name}: versions come from requirements.txt (-c)"
        assert normalize(name) in pins, f"{name} has no pin in requirements.txt"


def api_image_distributions() -> set[str]:
    """docker/requirements-api.txt and everything they require, as installed here (extras left out)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    wanted = [normalize(name) for name in requirement_names(DOCKER / "requirements-api.txt")]
    wanted += ["pip", "setuptools"]  # what `python -m venv` brings
    seen = {"leukolab"}  # installed with --no-deps
    while wanted:
        name = wanted.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(normalize(requirement.name))
    return seen


HIDDEN_IMPORTS_PROBE = r"""
import importlib.machinery, json, sys

hidden = set(json.loads(sys.argv[1]))

# The path finder of an image without the hidden distributions: they are simply not found, as there.
class OnlyTheImage(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            return None
        return super().find_spec(name, path, target)

sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = OnlyTheImage

import leukolab.serving.__main__  # the image's entrypoint: `python -m leukolab.serving`
from fastapi.testclient import TestClient
from leukolab.serving.app import create_app

with TestClient(create_app()) as client:
    answer = client.post("/predict", files={"file": ("smear.jpg", open(sys.argv[2], "rb").read(), "image/jpeg")})
    assert answer.status_code == 200, answer.text
    assert client.get("/ready").status_code == 200
    assert "leukolab_predictions_total" in client.get("/metrics").text
print(json.dumps(answer.json()["predicted_class"]))
"""


@pytest.mark.integration
def test_api_image_requirements_are_enough_to_serve(model_env, tmp_path):
    """The API loads the registered model and predicts with every distribution outside the API image hidden."""
    from importlib.metadata import packages_distributions

    allowed = api_image_distributions()
    hidden = sorted(module for module, dists in packages_distributions().items()
                    if not module.startswith("_") and not any(normalize(d) in allowed for d in dists))
    assert {"pyspark", "jupyterlab", "voila", "papermill", "selenium"} <= set(hidden)
    image = tmp_path / "smear.jpg"
    image.write_bytes(model_env["example_image"])
    env = {**os.environ, "LEUKOLAB_MODEL_URI": model_env["uri"]}
    result = subprocess.run([sys.executable, "-c", HIDDEN_IMPORTS_PROBE, json.dumps(hidden), str(image)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) in model_env["class_names"]


# --- MLflow server -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group this test started, SIGKILL it after 15 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def wait_for(url: str, process: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{url}: the server exited:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer 200 within {seconds:.0f} s:\n{log.read_text()[-3000:]}")


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
    with open(log, "wb") as output:
        server = subprocess.Popen([sys.executable, "-m", *command], stdout=output, stderr=subprocess.STDOUT,
                                  env={**os.environ, **environment, "MLFLOW_AUTH_CONFIG_PATH": str(local_config)},
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    user, password = environment["MLFLOW_AUTH_ADMIN_USERNAME"], environment["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert password == "test-only-mlflow_tracking_password"  # from .env, nowhere else
    try:
        wait_for(f"{url}/health", server, log, 120)  # open: the health check needs no credentials
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
        stop(server)
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
    with open(log, "wb") as output:
        server = subprocess.Popen([str(Path(sys.executable).parent / "jupyter"), *command[1:]], stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "JUPYTER_TOKEN": token, "HOME": str(tmp_path / "home")})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/api/status?token={token}", server, log, 90)
        landing = httpx.get(f"{url}/?token={token}", trust_env=False)
        assert landing.status_code == 302 and landing.headers["location"].startswith("/lab/tree/notebooks")
        listing = httpx.get(f"{url}/api/contents/notebooks", params={"token": token}, trust_env=False)
        assert listing.status_code == 200 and "demo.ipynb" in {item["name"] for item in listing.json()["content"]}
        assert httpx.get(f"{url}/api/contents/notebooks", trust_env=False).status_code == 403
    finally:
        stop(server)


# --- Prometheus and the dashboard --------------------------------------------------------------------

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (not functions, keywords, labels or numbers)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if match[0].lower() in PROMQL_KEYWORDS or expr[match.end():].lstrip().startswith("("):
            continue
        names.add(match[0])
    return names


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.95, sum by (le) (rate(leukolab_inference_seconds_bucket[$__rate_interval])))') \
        == {"leukolab_inference_seconds_bucket"}
    assert metric_names('(up{job="a"} == 1) unless on (job, instance) leukolab_model_info') == {"up", "leukolab_model_info"}
    assert metric_names("sum(rate(a_total[5m])) / clamp_min(sum(rate(b_total[5m])), 1e-9) > 0.2") == {"a_total", "b_total"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every query in the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]]


def test_dashboard_is_complete_and_uses_the_provisioned_data_source():
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        assert panel["targets"], panel["title"]
        for holder in [panel, *panel["targets"]]:
            assert holder["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"])
    queries = dashboard_queries()
    by_title = {title.lower(): [expr for t, expr in queries if t == title] for title, _ in queries}

    def panel_with(*words: str) -> list[str]:
        matches = [exprs for title, exprs in by_title.items() if all(word in title for word in words)]
        assert matches, f"no panel titled with {words}"
        return matches[0]

    assert any("leukolab_requests_total" in expr for expr in panel_with("request rate"))
    latency = panel_with("latency")
    assert sorted(re.search(r"histogram_quantile\(([\d.]+)", expr)[1] for expr in latency) == ["0.5", "0.95", "0.99"]
    assert all("leukolab_inference_seconds_bucket" in expr for expr in latency)
    assert any("predicted_class" in expr for expr in panel_with("predictions by class"))
    assert any("leukolab_prediction_confidence" in expr for expr in panel_with("confidence", "trend"))
    assert panel_with("drift") == ["max(leukolab_low_confidence_alert)", "max(leukolab_colour_drift_alert)"]
    assert any("leukolab_batch_size" in expr for expr in panel_with("batch size"))
    assert any("reason" in expr for expr in panel_with("errors by reason"))
    assert any("leukolab_model_info" in expr for expr in panel_with("model version"))
    assert any("leukolab_referrals_total" in expr for expr in panel_with("referral rate"))


def test_dashboard_and_alerts_query_only_metrics_the_api_exports(model_env):
    """Every series a dashboard panel or an alert rule selects is exported by the real API after traffic."""
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from leukolab.serving.app import create_app

    with TestClient(create_app(model_env["uri"])) as client:
        assert client.post("/predict", files={"file": ("smear.jpg", model_env["example_image"])}).status_code == 200
        assert client.post("/predict", files={"file": ("notes.txt", b"not an image")}).status_code == 415
        exposition = client.get("/metrics").text
    exported = {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}
    queries = dashboard_queries() + [(rule["alert"], rule["expr"]) for rule in alert_rules()]
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - exported - PROMETHEUS_SERIES
        assert not unknown, f"{where} queries {sorted(unknown)}, which the API does not export ({expr!r})"


@pytest.mark.integration
def test_promtool_accepts_the_config_and_the_alert_rules(tools):
    for args in (["check", "config", str(PROMETHEUS_CONFIG)], ["check", "rules", str(ALERT_RULES)]):
        result = subprocess.run([str(tools["promtool"]), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in subprocess.run(
        [str(tools["promtool"]), "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=60).stdout


def prometheus_query(url: str, query: str) -> list[dict]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=10, trust_env=False).json()
    assert response["status"] == "success", f"{query}: {response}"
    return response["data"]["result"]


def poll(what: str, check, seconds: float = 30.0, interval: float = 0.5):
    """``check()`` until it returns something truthy; fail after ``seconds`` with the last value."""
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        if last := check():
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not seen within {seconds:.0f} s (last: {last!r})")


@pytest.mark.integration
def test_real_prometheus_scrapes_the_api_and_answers_the_dashboard(tools, model_env, tmp_path):
    """The committed scrape config and rules, the API target moved to a local server: Prometheus counts our predictions."""
    from prometheus_client.parser import text_string_to_metric_families

    from leukolab.serving.client import post_images
    from leukolab.serving.launch import start_server

    predictions = 7
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / name) for name in config["rule_files"]]
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] == "leukolab-api"]
    assert len(config["scrape_configs"]) == 1

    with start_server(model_env["uri"], port=0, log_path=tmp_path / "api.log", timeout=120) as api:
        config["scrape_configs"][0]["static_configs"][0]["targets"] = [api.url.removeprefix("http://")]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port, log = free_port(), tmp_path / "prometheus.log"
        with open(log, "wb") as output:
            prometheus = subprocess.Popen(
                [str(tools["prometheus"]), f"--config.file={tmp_path / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(f"{url}/-/ready", prometheus, log, 60)
            # Predictions made before the first scrape would show in the counter but not in increase().
            poll("a first scrape of the API", lambda: prometheus_query(url, "leukolab_predictions_total"))
            for sent in post_images(f"{api.url}/predict", [model_env["example_image"]] * predictions, "smear.jpg",
                                    "image/jpeg"):
                assert sent.response.status_code == 200, sent.response.text

            def counted():
                result = prometheus_query(url, 'sum(leukolab_predictions_total{job="leukolab-api"})')
                return result and float(result[0]["value"][1]) == predictions and result

            poll(f"sum(leukolab_predictions_total) == {predictions} in Prometheus", counted)
            targets = httpx.get(f"{url}/api/v1/targets", timeout=10, trust_env=False).json()["data"]["activeTargets"]
            assert [(t["labels"]["job"], t["health"]) for t in targets] == [("leukolab-api", "up")]

            # Prometheus' counts per class are the API's own.
            api_metrics = httpx.get(f"{api.url}/metrics", timeout=10, trust_env=False).text
            own = {sample.labels["predicted_class"]: sample.value for family in text_string_to_metric_families(api_metrics)
                   for sample in family.samples if sample.name == "leukolab_predictions_total"}
            scraped = {row["metric"]["predicted_class"]: float(row["value"][1])
                       for row in prometheus_query(url, "sum by (predicted_class) (leukolab_predictions_total)")}
            assert scraped == own and sum(own.values()) == predictions

            # Every dashboard query runs; the panels that summarise traffic have data.
            for title, expr in dashboard_queries():
                query = expr
                for variable, value in GRAFANA_VARIABLES.items():
                    query = query.replace(variable, value)
                result = prometheus_query(url, query)
                if title in {"Served model", "Model version", "Drift alerts (low confidence, colour)", "Input colour distance from training"}:
                    assert result, f"{title}: {query} returned nothing"
                if title in {"Predictions in range", "Class mix over the range"}:  # increase() extrapolates
                    assert sum(float(row["value"][1]) for row in result) >= predictions, f"{title}: {result}"
            model = prometheus_query(url, "max by (name, version, run_id) (leukolab_model_info)")[0]["metric"]
            assert (model["name"], model["version"], model["run_id"]) == ("leukolab", model_env["version"], model_env["run_id"])

            # The alert rules load and evaluate; with the API up and its model loaded, those two stay quiet.
            def evaluated():
                groups = httpx.get(f"{url}/api/v1/rules", timeout=10, trust_env=False).json()["data"]["groups"]
                rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
                return rules if all(rule.get("health") == "ok" for rule in rules.values()) and rules else None

            rules = poll("every alert rule evaluated with health ok", evaluated)
            assert set(rules) == {rule["alert"] for rule in alert_rules()}
            assert rules["LeukolabApiDown"]["state"] == rules["LeukolabModelNotLoaded"]["state"] == "inactive"
        finally:
            stop(prometheus)
