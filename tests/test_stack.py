"""The docker compose stack in docker/, checked without a Docker engine: the compose file resolves with Docker
Compose v2's own parser (``docker compose config``) from the repository root with a copy of ``.env.example``, as the
README tells a user to run it; it refuses to resolve without the secrets; services reach each other by the names and
ports the other files use; no committed file holds a secret.

The images, the services' command lines and Prometheus with the dashboard: tests/test_stack_images.py,
test_stack_services.py, test_stack_prometheus.py. The tools come from ``docker/install-check-tools.sh`` (``make
stack-tools``), which the ``check_tools`` fixture runs (quick when all is there); the tests skip only when it says
apt-get cannot be used here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from stack_files import (
    COMPOSE_FILE,
    DASHBOARD,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    DOCKER,
    ENV_EXAMPLE,
    PROMETHEUS_CONFIG,
    SECRETS,
    compose,
    env_file,
    resolved,
)


SERVICES = {"jupyter", "mlflow", "api", "voila", "prometheus", "grafana"}
SPARK_SERVICES = {"spark-master", "spark-worker"}


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
