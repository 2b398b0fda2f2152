"""Champion hot swap on the real server: the API follows its alias to a new version while requests flow, and keeps
the old version when the new one cannot load; and, on its own, a swapped-out version's batcher outliving the
requests that use it.

The server serves ``models:/leukolab-hotswap@champion``, versions of the test model registered under a name of
their own (``registered_model``'s ``leukolab@champion`` stays where other tests expect it), and resolves the alias
every second.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time

import httpx
import pytest

NAME = "leukolab-hotswap"
POLL_SECONDS = 3.0  # long enough for the tiny model to load and warm on 2 busy cores


def on_the_server(test):
    """Marks a test that starts the real server."""
    return pytest.mark.integration(pytest.mark.timeout(240)(test))


@pytest.fixture(scope="module")
def registry(model_env):
    """A function registering the test model again as a new version of ``NAME`` (``source``: its artifacts, by
    default the test model's) and one moving the alias: ``(register, point_alias_to)``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(model_env["tracking_uri"], model_env["tracking_uri"])
    original = client.get_model_version("leukolab", model_env["version"])
    try:
        client.create_registered_model(NAME)
    except MlflowException:  # made by an earlier session on this store
        pass

    def register(source: str | None = None) -> str:
        return str(client.create_model_version(NAME, source or original.source, original.run_id).version)

    def point_alias_to(version: str) -> None:
        client.set_registered_model_alias(NAME, "champion", version)

    point_alias_to(register())
    return register, point_alias_to


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory):
    from leukolab.serving.launch import start_server

    log = tmp_path_factory.mktemp("hot-swap") / "server.log"
    with start_server(f"models:/{NAME}@champion", log_path=log, timeout=180, model_poll_seconds=POLL_SECONDS) as handle:
        yield handle


def served_version(url: str) -> str:
    return httpx.get(f"{url}/version", timeout=30, trust_env=False).json()["version"]


def swaps(url: str) -> dict[str, float]:
    """``leukolab_model_swaps_total`` by outcome, and the versions ``leukolab_model_info`` names."""
    text = httpx.get(f"{url}/metrics", timeout=30, trust_env=False).text
    counts = {m[1]: float(m[2]) for m in re.finditer(r'^leukolab_model_swaps_total\{outcome="(\w+)"\} (\S+)$', text, re.M)}
    counts["info_versions"] = re.findall(r'^leukolab_model_info\{.*version="(\w*)".*\} 1\.0$', text, re.M)
    return counts


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what} within {seconds:g} s")


class RequestFlow:
    """``threads`` clients posting ``image`` to ``/predict`` in a loop (each at most ``limit`` requests) until stopped:
    every answer's status and model version, and any exception."""

    def __init__(self, url: str, image: bytes, threads: int = 3, limit: int = 2000):
        self.url, self.image, self.limit = url, image, limit
        self.answers: list[tuple[int, str | None]] = []
        self.exceptions: list[Exception] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._post_until_stopped) for _ in range(threads)]

    def _post_until_stopped(self) -> None:
        with httpx.Client(timeout=60, trust_env=False) as client:
            for _ in range(self.limit):
                if self._stop.is_set():
                    return
                try:
                    response = client.post(f"{self.url}/predict", files={"file": ("smear.jpg", self.image, "image/jpeg")})
                    version = response.json().get("model_version") if response.status_code == 200 else None
                    self.answers.append((response.status_code, version))
                except Exception as error:
                    self.exceptions.append(error)

    def __enter__(self) -> RequestFlow:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)


def test_a_swapped_out_version_answers_its_requests_and_stops_after_the_last():
    from leukolab.predictor.meta import ModelInfo
    from leukolab.serving.batching import MicroBatcher
    from leukolab.serving.metrics import ServingMetrics
    from leukolab.serving.model_slot import LoadedModel, ModelSlot
    from leukolab.serving.settings import ServingSettings

    async def swap_during_a_request() -> None:
        batcher = MicroBatcher(lambda items: [item * 2 for item in items])
        batcher.start()
        slot = ModelSlot(ServingSettings(), ServingMetrics())
        slot.current = old = LoadedModel(None, ModelInfo("models:/x/1"), batcher)
        async with slot.use() as served:
            retiring = asyncio.create_task(ModelSlot._retire(old))
            await asyncio.sleep(0.05)
            assert not retiring.done() and await served.batcher.submit(21) == 42  # still answering its user
        await asyncio.wait_for(retiring, 5)
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(1)

    asyncio.run(swap_during_a_request())


@on_the_server
def test_moving_the_alias_swaps_versions_while_requests_flow_without_an_error(server, registry, model_env):
    register, point_alias_to = registry
    before, counted = served_version(server.url), swaps(server.url)
    new = register()
    with RequestFlow(server.url, model_env["example_image"]) as flow:
        wait_for(lambda: len(flow.answers) >= 5, 60, "requests flowing")
        point_alias_to(new)
        moved = time.monotonic()
        wait_for(lambda: served_version(server.url) == new, 60, f"version {new} answering")
        swap_seconds = time.monotonic() - moved
        answered = len(flow.answers)
        wait_for(lambda: len(flow.answers) >= answered + 5, 60, "requests answered by the new version")
    assert not flow.exceptions and {status for status, _ in flow.answers} == {200}, flow.exceptions or flow.answers
    log = server.log_path.read_text()
    load_seconds = float(re.search(rf"loaded models:/{NAME}@champion \({NAME}/{new}\) in (\S+) s", log)[1])
    assert swap_seconds <= 2 * POLL_SECONDS, (
        f"version {new} answered {swap_seconds:.1f} s after the alias moved, {load_seconds} s of it loading")
    versions = [version for _, version in flow.answers]
    assert f"{NAME}/{before}" in versions and versions[-1] == f"{NAME}/{new}"
    now = swaps(server.url)
    assert now["swapped"] == counted["swapped"] + 1 and now["info_versions"] == [new]
    assert f"version {new} answers now (was {before})" in log


@on_the_server
def test_an_alias_moved_to_a_version_that_cannot_load_leaves_the_old_one_answering(server, registry, model_env,
                                                                                   tmp_path):
    import mlflow

    register, point_alias_to = registry
    before, counted = served_version(server.url), swaps(server.url)
    artifacts = mlflow.artifacts.download_artifacts(f"models:/{NAME}/{before}", dst_path=str(tmp_path / "copy"))
    broken = register(artifacts)
    shutil.rmtree(artifacts)  # the version's artifacts are gone
    point_alias_to(broken)
    wait_for(lambda: swaps(server.url)["failed"] == counted["failed"] + 1, 60, "the failed swap counted")
    time.sleep(2 * POLL_SECONDS)  # polls that find the same version do not try it again
    now = swaps(server.url)
    assert now["failed"] == counted["failed"] + 1 and now["swapped"] == counted["swapped"]
    assert served_version(server.url) == before and now["info_versions"] == [before]
    answer = httpx.post(f"{server.url}/predict", files={"file": ("smear.jpg", model_env["example_image"], "image/jpeg")},
                        timeout=60, trust_env=False)
    assert answer.status_code == 200 and answer.json()["model_version"] == f"{NAME}/{before}"
    assert f"version {broken} could not be loaded; version {before} keeps answering" in server.log_path.read_text()
