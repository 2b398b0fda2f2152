"""What the out-of-distribution check costs a request: ``POST /predict`` p50 with the check against without it.

One network (simple-cnn at 128 px, its random initial weights: speed does not depend on them) is logged twice in a
scratch workspace: once plain (``leukolab-plain``, as models published before the check) and once with an OOD check
fitted on ``--train-images`` synthetic smears and thresholded on them out of fold and ``--val-images`` (``leukolab``). Both are served at
once on 127.0.0.1 and one client alternates single requests between them (concurrency 1, the same images in the same
order), so whatever else the machine is doing weighs on both alike; the ratio of their p50 is the check's cost.
The run is bounded by ``--requests`` per server and ``--seconds``.

    python benchmarks/ood.py                       # about 2 minutes on 2 cores
    python benchmarks/ood.py --train-images 2000 --markdown
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve import api_request, synthetic_jpegs  # noqa: E402  (the serving benchmark's images and request body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=int, default=1200, help="the OOD check's training bank (default 1200)")
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200, help="requests per server (default 200)")
    parser.add_argument("--seconds", type=float, default=120, help="stop alternating after this long (default 120)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="leukolab-ood-bench-")
    os.environ["LEUKOLAB_WORKSPACE"] = scratch
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    images = synthetic_jpegs(32)
    began = time.perf_counter()
    uris, fit_seconds = register_models(128, args.train_images, args.val_images, images[:2])
    print(f"models registered in {time.perf_counter() - began:.0f} s (OOD check fitted in {fit_seconds:.1f} s)",
          file=sys.stderr)
    from leukolab.serving.launch import start_server

    servers = {label: start_server(uri, log_path=Path(scratch) / f"{label}.log", timeout=180)
               for label, uri in uris.items()}
    try:
        latencies = alternate(servers, images, args.requests, args.seconds)
    finally:
        for server in servers.values():
            server.stop()
    report(latencies, args)


def register_models(image_size: int, train_images: int, val_images: int, examples: list[bytes]) -> tuple[dict, float]:
    """``leukolab-plain`` (no check) and ``leukolab`` (with one) of the same network, both ``@champion``."""
    import mlflow

    from leukolab import CLASS_NAMES
    from leukolab.config.experiment import load_experiment
    from leukolab.data.synthetic.smears import image_rng, render_smear
    from leukolab.models.factory import build_model
    from leukolab.ood import fit_detector
    from leukolab.predictor.smear_model import SmearModel, log_smear_model
    from leukolab.publishing.registry import register
    from leukolab.tracking import configure

    configure()
    experiment = load_experiment("simple-cnn")
    meta = {"experiment": experiment, "class_names": list(CLASS_NAMES), "image_size": image_size,
            "mean": [0.8, 0.65, 0.7], "std": [0.15, 0.2, 0.15], "temperature": 1.0}
    network = build_model(experiment, len(CLASS_NAMES)).eval()
    model = SmearModel(network, meta)

    def smears(seed: int, count: int) -> tuple[list[np.ndarray], np.ndarray]:
        labels = np.arange(count) % len(CLASS_NAMES)
        return [render_smear(image_rng(seed, CLASS_NAMES[k], i), CLASS_NAMES[k], image_size)[0]
                for i, k in enumerate(labels)], labels

    (train, labels), (val, _) = smears(11, train_images), smears(12, val_images)
    started = time.perf_counter()
    ood = fit_detector(model.ood_inputs(train), labels, model.ood_inputs(val))
    fit_seconds = time.perf_counter() - started
    uris = {}
    for label, name, check in (("without", "leukolab-plain", None), ("with", "leukolab", ood)):
        with mlflow.start_run(run_name=f"ood-benchmark-{label}"):
            logged = log_smear_model(network, meta, examples, ood=check)
        uris[label] = f"models:/{register(logged.model_uri, name, 'champion').name}@champion"
    return uris, fit_seconds


def alternate(servers: dict, images: list[bytes], requests: int, seconds: float) -> dict[str, list[float]]:
    """Single requests, one server then the other, the same image each round: latencies in ms per server."""
    latencies = {label: [] for label in servers}
    deadline = time.perf_counter() + seconds
    with httpx.Client(timeout=60, trust_env=False) as client:
        for round_ in range(requests + 5):  # the first 5 rounds warm up
            if time.perf_counter() > deadline:
                break
            for label, server in (servers.items() if round_ % 2 else reversed(servers.items())):
                url, body, headers = api_request(server.url, images[round_ % len(images)])
                sent = time.perf_counter()
                response = client.post(url, content=body, headers=headers)
                elapsed = (time.perf_counter() - sent) * 1000
                response.raise_for_status()
                if label == "with" and response.json().get("ood_score") is None:
                    raise RuntimeError("the model with the check answered without an ood_score")
                if round_ >= 5:
                    latencies[label].append(elapsed)
    return latencies


def report(latencies: dict[str, list[float]], args) -> None:
    p50 = {label: statistics.median(values) for label, values in latencies.items()}
    p99 = {label: float(np.quantile(values, 0.99)) for label, values in latencies.items()}
    ratio = p50["with"] / p50["without"]
    count = len(latencies["with"])
    if args.markdown:
        print("| `/predict`, concurrency 1 | requests | p50 ms | p99 ms |\n|---|---|---|---|")
        for label in ("without", "with"):
            print(f"| {label} the OOD check | {len(latencies[label])} | {p50[label]:.1f} | {p99[label]:.1f} |")
        print(f"\np50 with / without: **x{ratio:.2f}** (check fitted on {args.train_images} images; goal at most x1.2)")
    else:
        print(f"{count} requests each: p50 without {p50['without']:.1f} ms, with {p50['with']:.1f} ms: x{ratio:.2f}")


if __name__ == "__main__":
    main()
