"""The images in docker/, checked without a Docker engine: base and third-party images pinned, the API non-root with a
health check on ``/ready``, build contexts that never carry ``.env``, and an API requirement list that is enough: the
API loads a model and predicts with every distribution outside that list hidden."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from stack_files import DOCKER


DOCKERFILES = ["workspace.Dockerfile", "api.Dockerfile"]


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
