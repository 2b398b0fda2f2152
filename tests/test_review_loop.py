"""The whole review loop through the real command and HTTP, on a copy of the shared smoke run's workspace: the
smoke champion serves with ``LEUKOLAB_KEEP_REFERRED=1``; shifted and ambiguous images are answered, the referred
ones kept; reviews are entered through the review page's own code; ``leukolab retrain --min-reviews`` first says
there are too few, then builds the next dataset (reviews in train, the test split unchanged), trains, gates, and the
API follows ``@champion`` to the new version when it wins; lineage and ``leukolab compare`` name the reviews.

The retrain runs a tiny override of the smoke profile (the classifier only) up to ``publish``.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import time

import httpx
import pandas as pd
import pytest
import yaml
from conftest import ROOT, leukolab
from PIL import Image

from leukolab.pipeline.lineage import LINEAGE_FILE

pytestmark = [pytest.mark.integration, pytest.mark.long]


@pytest.fixture(scope="module")
def workspace(smoke_run, tmp_path_factory):
    """The smoke workspace copied (its registry and runs too), so the shared one keeps its champion."""
    source, _ = smoke_run
    copy = tmp_path_factory.mktemp("review-loop") / "workspace"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("mlartifacts"))  # artifacts are named by absolute path
    return copy


@pytest.fixture(scope="module")
def server(workspace):
    from leukolab.serving.launch import start_server

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workspace / 'mlflow.db'}")
        patch.setenv("LEUKOLAB_KEEP_REFERRED", "1")
        patch.setenv("HF_HUB_OFFLINE", "1")
        with start_server("models:/leukolab@champion", log_path=workspace / "server.log", timeout=180,
                          model_poll_seconds=2) as handle:
            yield handle


def shifted_and_ambiguous(folder) -> list[tuple[bytes, str]]:
    """Stain-shifted smears of every class, and two blends of two classes: (JPEG bytes, the class they show)."""
    from leukolab.data.synthetic.folder import generate_dataset

    raw = generate_dataset(folder, 2, image_size=64, seed=123, domain_shift={"hue": 40, "illumination": 0.8})
    images = [(path.read_bytes(), path.parent.name) for path in sorted((raw / "Original").glob("*/*.jpg"))]
    for (a, class_a), (b, _) in ((images[0], images[4]), (images[2], images[6])):
        blend = Image.blend(*(Image.open(io.BytesIO(x)).convert("RGB") for x in (a, b)), 0.5)
        buffer = io.BytesIO()
        blend.save(buffer, format="JPEG")
        images.append((buffer.getvalue(), class_a))
    return images


def test_referred_cases_are_kept_reviewed_and_retrained_on(workspace, server, tmp_path):
    from leukolab.data.reading.dataset import load_manifest, load_split
    from leukolab.review.store import ReviewStore
    from leukolab.review_page import build_review

    images = shifted_and_ambiguous(tmp_path / "shifted")
    truth = {image: label for image, label in images}
    decisions = [httpx.post(f"{server.url}/predict", files={"file": ("x.jpg", image)}, timeout=60).json()["decision"]
                 for image, _ in images[:4]]
    batch = httpx.post(f"{server.url}/predict/batch", files=[("files", ("x.jpg", image)) for image, _ in images[3:-1]],
                       timeout=60).json()
    decisions += [answer["decision"] for answer in batch["predictions"]][1:]  # its first was sent to /predict too
    v2 = httpx.post(f"{server.url}/v2/models/leukolab/infer", timeout=60, json={"inputs": [{
        "name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(images[-1][0]).decode()]}]}).json()
    decisions += next(output["data"] for output in v2["outputs"] if output["name"] == "decision")
    referred = [image for (image, _), decision in zip(images, decisions) if decision == "refer"]
    assert len(decisions) == len(images) and len(referred) >= 3, f"the smoke champion referred {decisions}"

    store = ReviewStore(workspace / "review")
    assert sorted(case.image_path.read_bytes() for case in store.cases()) == sorted(referred)
    page = build_review(store, reviewer="Dr Test")  # the page's own code, heatmaps from the version that answered
    assert "no heatmap" not in page.widget.children[3].value
    for number in range(len(referred)):
        case = page.session.current()
        page.label.value = "unusable" if number == 0 else truth[case.image_path.read_bytes()]
        page.save.click()
    usable = [r["id"] for r in store.latest_reviews() if r["label"] != "unusable"]
    assert store.backlog() == 0 and len(usable) == len(referred) - 1

    profile = yaml.safe_load((ROOT / "params" / "profiles" / "smoke.yaml").read_text())
    profile["experiments"] = {"classify": ["simple-cnn"]}
    tiny = tmp_path / "smoke-classifier.yaml"
    tiny.write_text(yaml.safe_dump(profile))
    waiting = leukolab(workspace, "retrain", "--profile", str(tiny), "--min-reviews", "100")
    assert waiting.returncode == 0 and f"{len(usable)} new review(s) since the last retrain, fewer than" in waiting.stdout
    retrained = leukolab(workspace, "retrain", "--profile", str(tiny), "--min-reviews", "2", "--run-id", "retrain-1")
    assert retrained.returncode == 0, retrained.stdout[-3000:] + retrained.stderr[-3000:]

    lineage = json.loads((workspace / "runs" / "retrain-1" / LINEAGE_FILE).read_text())
    etl = lineage["tasks"]["etl"]["result"]
    assert etl["extra_sources"][0]["reviews"] == sorted(usable), "lineage names the reviews that entered"
    old = json.loads((workspace / "runs" / "smoke-1" / LINEAGE_FILE).read_text())["tasks"]["etl"]["result"]["dataset_dir"]
    before, after = load_split(old), load_split(etl["dataset_dir"])
    test_rows = [frame[frame["split"] == "test"].sort_values("source_path").reset_index(drop=True) for frame in (before, after)]
    pd.testing.assert_frame_equal(*test_rows, check_exact=True, obj="the test rows")
    added = after[after["source_path"].str.startswith("extra/")]
    assert set(added["split"]) == {"train"} and len(added) == len(usable)
    assert load_manifest(etl["dataset_dir"])["fingerprint"] != load_manifest(old)["fingerprint"]

    published = lineage["tasks"]["publish"]["result"]
    assert f"version {published['version']} is @{published['alias']}" in retrained.stdout
    deadline = time.monotonic() + 90
    expected = str(published["version"]) if published["alias"] == "champion" else "1"
    while (served := httpx.get(f"{server.url}/version", timeout=10).json()["version"]) != expected:
        assert time.monotonic() < deadline, f"the API serves version {served}, not {expected}:\n{server.log_tail()}"
        time.sleep(1)
    print(f"gate: {published['alias']}; the API serves version {served}")

    compared = leukolab(workspace, "compare", "smoke-1", "retrain-1")
    assert compared.returncode == 0 and re.search(rf"reviews in train +none +{len(usable)} \(review ids", compared.stdout), \
        compared.stdout
    again = leukolab(workspace, "retrain", "--profile", str(tiny), "--min-reviews", "1")
    assert again.returncode == 0 and "0 new review(s)" in again.stdout

    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert f'leukolab_review_kept_total{{outcome="kept"}} {float(len(referred))}' in metrics
    assert "leukolab_review_backlog 0.0" in metrics
