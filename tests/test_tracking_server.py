"""The whole smoke pipeline against a real ``mlflow server`` (SQLite backend, served artifacts) through the real CLI:
runs, notebooks, registry and model card on the server, nothing in the workspace's store, and the API serving the
champion from it."""

import time

import httpx
import pytest

from conftest import _jpeg_bytes, leukolab

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.timeout(1500)]
STAGES = ["etl", "segment", "classify", "evaluate", "publish", "serve"]


@pytest.fixture(scope="module")
def server_run(tmp_path_factory):
    """A lean tracking server and one smoke run against it: (server, workspace, client, seconds of the run).
    The server is stopped afterwards, and no process of it may be left."""
    from mlflow.tracking import MlflowClient

    from leukolab.tracking_server import start_tracking_server

    server = start_tracking_server(tmp_path_factory.mktemp("tracking-server"))
    try:
        workspace = tmp_path_factory.mktemp("server-workspace")
        started = time.perf_counter()
        result = leukolab(workspace, "run", "--profile", "smoke", "--run-id", "smoke-server",
                          env={"MLFLOW_TRACKING_URI": server.url})
        seconds = time.perf_counter() - started
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        print(f"smoke pipeline against {server.url}: {seconds:.1f} s")
        yield server, workspace, MlflowClient(tracking_uri=server.url, registry_uri=server.url), seconds
    finally:
        server.stop()
        assert not server.running(), "a process of the tracking server outlived stop()"


def test_every_stage_run_and_notebook_is_on_the_server(server_run):
    server, workspace, client, _ = server_run
    champion = client.get_model_version_by_alias("leukolab", "champion")
    parent = client.get_run(champion.tags["pipeline_run_id"])
    assert parent.data.tags["leukolab.pipeline_run_id"] == "smoke-server" and parent.info.status == "FINISHED"
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["leukolab.stage"] for r in children) == sorted(STAGES)
    assert {r.info.status for r in children} == {"FINISHED"}
    for run in children:
        notebooks = [a.path for a in client.list_artifacts(run.info.run_id, "notebook")]
        assert len(notebooks) == 1 and notebooks[0].endswith(".ipynb"), (run.data.tags["leukolab.stage"], notebooks)
        on_disk = server.artifacts / parent.info.experiment_id / run.info.run_id / "artifacts" / notebooks[0]
        assert on_disk.stat().st_size > 0
    assert (server.artifacts / parent.info.experiment_id / parent.info.run_id / "artifacts" / "lineage.json").is_file()


def test_the_champion_and_its_model_card_are_on_the_server_and_nothing_local(server_run):
    server, workspace, client, _ = server_run
    champion = client.get_model_version_by_alias("leukolab", "champion")
    assert champion.version == "1" and champion.run_id
    assert champion.tags["model_card"] == f"runs:/{champion.run_id}/model_card/model_card.md"
    run = client.get_run(champion.run_id)
    on_disk = server.artifacts / run.info.experiment_id / run.info.run_id / "artifacts" / "model_card" / "model_card.md"
    card = on_disk.read_text()
    assert champion.description.split("\n\n(The full card:")[0] in card and server.url in card  # the card's lineage names the tracking server
    assert not (workspace / "mlartifacts").exists() and not (workspace / "mlflow.db").exists()


def test_leukolab_serve_serves_the_champion_from_the_server(server_run, tmp_path, monkeypatch):
    server, _, client, _ = server_run
    from leukolab.serving.launch import start_server

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    champion = client.get_model_version_by_alias("leukolab", "champion")
    image = _jpeg_bytes((72, 64))
    with start_server("models:/leukolab@champion", log_path=tmp_path / "api.log", timeout=300) as api:
        version = httpx.get(f"{api.url}/version", timeout=30, trust_env=False)
        answer = httpx.post(f"{api.url}/predict", files={"file": ("smear.jpg", image)}, timeout=60, trust_env=False)
    assert version.status_code == 200 and version.json()["version"] == champion.version
    assert version.json()["name"] == "leukolab"
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == f"leukolab/{champion.version}"
