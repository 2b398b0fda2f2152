"""Shared fixtures: a real, tiny model registered as ``models:/leukolab@champion`` in a temporary workspace, one
smoke pipeline run through the real CLI that every test needing a whole run shares, test clients of the prediction
API on that model, a Spark session and a raw folder with every kind of bad file planted for the ETL tests, the
tools the stack checks run (compose, BuildKit's Dockerfile parser, promtool, prometheus), and what the browser tests
share: a server started in the background, headless Chromium, waiting on a page, keeping a screenshot."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from raw_folders import write
from sample_images import encode, tiff16
from PIL import Image, ImageEnhance


ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "runs" / "test-artifacts"
"""Screenshots of the browser tests, kept after the run."""
PAGE_TIMEOUT = 180
"""Seconds a browser waits for a page to load."""


@pytest.fixture(scope="session")
def check_tools() -> dict[str, Path]:
    """The paths ``docker/install-check-tools.sh`` (``make stack-tools``) prints after installing what is missing:
    ``compose``, ``dockerfile``, ``chromium``, ``chromedriver``. Skips when it says apt-get cannot be used here."""
    result = subprocess.run(["bash", str(ROOT / "docker" / "install-check-tools.sh"), sys.executable],
                            capture_output=True, text=True, timeout=900)
    if result.returncode == 3:
        pytest.skip(f"these checks need Debian packages: {result.stderr.strip()}")
    assert result.returncode == 0, f"docker/install-check-tools.sh failed:\n{result.stderr}"
    return {name: Path(path) for name, _, path in (line.partition("=") for line in result.stdout.splitlines()) if path}


def _jpeg_bytes(size: tuple[int, int], colour: tuple[int, int, int] = (200, 110, 160)) -> bytes:
    """A small JPEG of one colour with a dark disc (a stand-in for a stained cell)."""
    image = Image.new("RGB", size, colour)
    image.paste((60, 20, 90), (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def registered_model(tmp_path_factory) -> dict:
    """A joint Unet/resnet18 (random weights, 64 px) logged with ``log_smear_model`` and registered as
    ``leukolab`` version 1 with alias ``champion``; its run has tag ``dataset_fingerprint=test-fingerprint``.

    Returns ``{"uri", "tracking_uri", "workspace", "run_id", "version", "class_names", "example_image"}``
    (``example_image``: JPEG bytes the model accepts). The environment is
    restored afterwards: tests that load the model use ``model_env`` (or set the two variables themselves).
    """
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from leukolab import tracking
    from leukolab.config.experiment import Experiment
    from leukolab.models.factory import build_model
    from leukolab.predictor.smear_model import log_smear_model

    workspace = tmp_path_factory.mktemp("served-workspace")
    tracking_uri = f"sqlite:///{workspace / 'mlflow.db'}"
    experiment = Experiment.model_validate({"task": "joint", "model": {"architecture": "Unet", "encoder": "resnet18", "encoder_weights": None}})
    class_names = ["Benign", "Early", "Pre", "Pro"]
    meta = {"experiment": experiment, "class_names": class_names, "image_size": 64,
            "mean": [0.5] * 3, "std": [0.25] * 3, "temperature": 1.0}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
        patch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        tracking.configure()
        torch.manual_seed(0)
        network = build_model(experiment, len(class_names))
        with mlflow.start_run(tags={"dataset_fingerprint": "test-fingerprint"}) as run:
            logged = log_smear_model(network, meta, example_images=[_jpeg_bytes((80, 60)), _jpeg_bytes((64, 64))])
        version = mlflow.register_model(logged.model_uri, "leukolab").version
        MlflowClient().set_registered_model_alias("leukolab", "champion", version)
    return {"uri": "models:/leukolab@champion", "tracking_uri": tracking_uri, "workspace": workspace,
            "run_id": run.info.run_id, "version": str(version), "class_names": class_names,
            "example_image": _jpeg_bytes((80, 60))}


@pytest.fixture(scope="session")
def tag_threshold(registered_model):
    """A function ``(name, threshold) -> uri``: ``registered_model``'s model registered again as a new version of
    ``name`` with the version tag ``referral_threshold`` (what ``40_publish`` sets), aliased ``champion``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from leukolab.predictor.decision import THRESHOLD_TAG

    def register(name: str, threshold: float) -> str:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", registered_model["tracking_uri"])
            client = MlflowClient()
            source = client.get_model_version("leukolab", registered_model["version"])
            try:
                client.create_registered_model(name)
            except MlflowException:  # registered by an earlier call
                pass
            version = client.create_model_version(name, source.source, source.run_id, tags={THRESHOLD_TAG: repr(threshold)})
            client.set_registered_model_alias(name, "champion", version.version)
        return f"models:/{name}@champion"
    return register


@pytest.fixture(scope="session")
def referring_model(registered_model, tag_threshold) -> dict:
    """``registered_model`` with ``uri`` ``models:/leukolab-referring@champion``: a version tagged
    ``referral_threshold=1.0``, so it refers every prediction (none of this model's is that confident)."""
    return {**registered_model, "uri": tag_threshold("leukolab-referring", 1.0), "referral_threshold": 1.0}


@pytest.fixture(scope="module")
def model_env(registered_model) -> dict:
    """``LEUKOLAB_WORKSPACE`` and ``MLFLOW_TRACKING_URI`` set to the registered model's, for one test module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEUKOLAB_WORKSPACE", str(registered_model["workspace"]))
        patch.setenv("MLFLOW_TRACKING_URI", registered_model["tracking_uri"])
        yield registered_model


def _logged_model(model_env: dict, spec: dict) -> str:
    """A model of experiment ``spec`` (random weights, 64 px, the test classes) logged in the test model's store:
    its ``runs:/`` URI."""
    import mlflow

    from leukolab import tracking
    from leukolab.config.experiment import Experiment
    from leukolab.models.factory import build_model
    from leukolab.predictor.smear_model import log_smear_model

    tracking.configure()
    experiment = Experiment.model_validate(spec)
    meta = {"experiment": experiment, "class_names": model_env["class_names"], "image_size": 64,
            "mean": [0.5] * 3, "std": [0.25] * 3, "temperature": 1.0}
    with mlflow.start_run():
        return log_smear_model(build_model(experiment, 4), meta, [model_env["example_image"]]).model_uri


@pytest.fixture(scope="module")
def classifier_uri(model_env) -> str:
    """A model that only classifies (the 4-block CNN, random weights), logged beside the joint test model."""
    return _logged_model(model_env, {"task": "classification", "model": {"architecture": "SimpleCNN", "width": 8}})


@pytest.fixture(scope="module")
def segmentation_model_uri(model_env) -> str:
    """A model that only segments (Unet/mobilenet_v2, random weights), logged beside the joint test model."""
    return _logged_model(model_env, {"task": "segmentation", "model": {"architecture": "Unet", "encoder": "mobilenet_v2"}})


def leukolab(workspace: Path, *args: str, timeout: int = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real `leukolab` command in ``workspace``, on its own SQLite store unless ``env`` (variables added to the
    environment) names another ``MLFLOW_TRACKING_URI``."""
    extra = env or {}
    env = {**os.environ, "LEUKOLAB_WORKSPACE": str(workspace), "HF_HUB_OFFLINE": "1", **extra}
    if "MLFLOW_TRACKING_URI" not in extra:
        env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "leukolab.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One smoke pipeline run (`smoke-1`), shared by the session: (workspace, completed process)."""
    workspace = tmp_path_factory.mktemp("pipeline")
    result = leukolab(workspace, "run", "--profile", "smoke", "--run-id", "smoke-1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workspace, result


@pytest.fixture
def tmpfs(tmp_path):
    """A function ``(size) -> Path``: a tmpfs of ``size`` (as ``mount`` takes it: ``16m``) under ``tmp_path``, unmounted
    after the test; skips the test where this process may not mount one (it takes root, or CAP_SYS_ADMIN)."""
    mounted = []

    def mount(size: str) -> Path:
        disk = tmp_path / f"disk-{len(mounted)}"
        disk.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "leukolab-test", str(disk)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"a size-limited tmpfs cannot be mounted here (it takes root): {result.stderr.strip()}")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A file that takes all of ``disk``'s free space but ``leave`` bytes."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as file:
        os.posix_fallocate(file.fileno(), 0, stats.f_bavail * stats.f_frsize - leave)
    return filler


@pytest.fixture(scope="module")
def client(model_env):
    """A test client of the prediction API on the registered model, for the module, once the model is ready."""
    from serving_helpers import LIMITS, ready_client

    from leukolab.serving.app import create_app

    client = ready_client(create_app(model_env["uri"], LIMITS))
    yield client
    client.__exit__(None, None, None)


@pytest.fixture
def fresh_client(model_env):
    """An app of its own, for tests that count metrics."""
    from fastapi.testclient import TestClient
    from serving_helpers import LIMITS, ready_client

    from leukolab.serving.app import ServingSettings, create_app

    def make(settings: ServingSettings = LIMITS, **options) -> TestClient:
        clients.append(ready_client(create_app(model_env["uri"], settings), **options))
        return clients[-1]
    clients: list[TestClient] = []
    yield make
    for client in clients:
        client.__exit__(None, None, None)


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


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    """A Spark session on local[2] for the module, its workspace a temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path_factory.mktemp("spark-workspace")))
        from leukolab.data.spark import spark_session

        session = spark_session("local[2]")
        yield session
        session.stop()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Synthetic smears (original_segmented) plus every kind of bad file, duplicates and near duplicates."""
    from leukolab.data.synthetic.folder import generate_dataset

    root = generate_dataset(tmp_path_factory.mktemp("raw") / "planted", images_per_class=10, image_size=96, seed=3)
    original = root / "Original"
    write(original / "Pre" / "zero.jpg", b"")
    write(original / "Pre" / "notes.jpg", b"not an image")
    good = (original / "Pro" / "Pro_0000.jpg").read_bytes()
    write(original / "Pro" / "cut.jpg", good[: len(good) // 3])
    write(original / "Early" / "tiny.png", encode(Image.new("RGB", (8, 8)), "PNG"))
    write(original / "Benign" / "wide.TIF", tiff16())
    write(original / "Benign" / "alpha.Png", encode(Image.new("RGBA", (96, 96), (200, 100, 150, 128)), "PNG"))
    flipped = Image.open(original / "Early" / "Early_0009.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    write(original / "Early" / "with space.JPG", encode(flipped, "JPEG"))
    write(root / "Segmented" / "Pro" / "orphan.png", encode(Image.new("L", (96, 96)), "PNG"))
    shutil.copy(original / "Early" / "Early_0001.jpg", original / "Early" / "Early_copy.jpg")  # within a class
    shutil.copy(original / "Pre" / "Pre_0002.jpg", original / "Pro" / "Pre_0002_misfiled.jpg")  # across classes
    write(original / "Unknown" / "x.jpg", (original / "Pre" / "Pre_0003.jpg").read_bytes())
    smear = Image.open(original / "Benign" / "Benign_0004.jpg")
    write(original / "Benign" / "Benign_0004_recompressed.jpg", encode(smear, "JPEG", quality=60))  # near, same class
    brighter = ImageEnhance.Brightness(Image.open(original / "Early" / "Early_0005.jpg")).enhance(1.08)
    write(original / "Pro" / "Early_0005_brighter.png", encode(brighter, "PNG"))  # near, another class
    write(original / "Pre" / "_draft.jpg", (original / "Pre" / "Pre_0004.jpg").read_bytes() + b"\0")  # Spark skips "_" names
    write(root / ".DS_Store", b"hidden")
    write(original / "Pre" / ".~lock.jpg", b"hidden")
    return root


@contextmanager
def background_server(command: list[str], env: dict, ready_url: str, log_path: Path, start_timeout: float = 60):
    """``command`` started in a session of its own (output in ``log_path``), yielded as its ``Popen`` once
    ``ready_url`` answers below 500; on exit it and every process it started are stopped (SIGTERM, then SIGKILL)."""
    from leukolab.processes.background import Background, wait_until_ready

    server = Background.start(command, log_path, str(command[:4]), env=env, cwd=ROOT, own_group=True, append=False,
                              grace=15)
    try:
        wait_until_ready(lambda: (status_of(ready_url) or 500) < 500, [server], start_timeout, interval=0.5)
        yield server.process
    finally:
        server.stop()


def status_of(url: str) -> int | None:
    """The HTTP status ``url`` answers with (no proxy), or None when nothing answers."""
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code
    except httpx.HTTPError:
        return None


@pytest.fixture
def browser(check_tools):
    """Headless Debian Chromium driven by Selenium, 1280 x 1100."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(check_tools["chromium"])
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(check_tools["chromedriver"])), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(driver, condition, timeout: float, what: str):
    """``condition(driver)`` once it is truthy; an ``AssertionError`` naming ``what``, with the page's text, after
    ``timeout`` seconds."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)
    except TimeoutException:
        raise AssertionError(f"{what} did not happen within {timeout} s; page text:\n{driver.find_element('tag name', 'body').text[-2000:]}") from None


def keep_screenshot(driver, folder: Path, name: str) -> Path:
    """The page as ``folder/name``, copied to ``runs/test-artifacts/``; the copy's path."""
    screenshot = folder / name
    assert driver.save_screenshot(str(screenshot))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(screenshot, ARTIFACTS / name))


def check_disjoint_rank_shards(trained: dict) -> None:
    """Two data-parallel ranks (their ``rank-N.json`` under ``trained["checkpoints"]``) each trained on its own half
    of train, and rank 0's shard is the one the fit result reports."""
    import json

    from leukolab.data.reading.dataset import load_datasets

    ranks = [json.loads((trained["checkpoints"] / f"rank-{r}.json").read_text()) for r in (0, 1)]
    train_size = len(load_datasets(trained["dataset_dir"], ("train",), "classification")["train"])
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert set(ranks[0]["indices"]).isdisjoint(ranks[1]["indices"])
    assert ranks[0]["samples"] == ranks[1]["samples"] == train_size // 2
    assert sorted(trained["result"].shard) == ranks[0]["indices"]
