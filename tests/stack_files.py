"""The compose stack's files in docker/, and the compose project as Docker Compose v2 resolves it from the repository
root with a copy of ``.env.example`` (``docker compose config``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import ROOT

DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "leukolab-api.json"
DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DOCKER / "grafana" / "provisioning" / "dashboards" / "leukolab.yml"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
ALERT_RULES = DOCKER / "prometheus" / "alerts.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SECRETS = ("JUPYTER_TOKEN", "GRAFANA_ADMIN_PASSWORD", "LEUKOLAB_API_TOKEN", "MLFLOW_TRACKING_PASSWORD",
           "MLFLOW_FLASK_SERVER_SECRET_KEY")


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
