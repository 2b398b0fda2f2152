"""Serving throughput and latency on one registered model: this API against ``mlflow models serve`` and the raw limit.

(a) this API (``leukolab.serving``, uvicorn, one process): ``POST /predict``
    with the image as a multipart file; concurrent requests are micro-batched.
(b) ``mlflow models serve -m <uri> --env-manager local`` (uvicorn, one worker),
    ``POST /invocations`` with ``{"dataframe_split": ...}`` holding the image
    as base64 in the binary column ``image``.
(c) the raw limit: the same decoding and preprocessing and the model's batched
    forward pass in this process, no HTTP, at the API's maximum batch size.
(x) this API with ``POST /predict?explain=true``: each answer also carries its
    Grad-CAM heatmap, computed outside the micro-batcher (compare with (a)).

For (a) and (b), a client in this process keeps ``concurrency`` requests in
flight for ``--seconds`` per level (after a warm-up) and reports requests/s
and p50/p99 latency; every level is bounded in time and every request goes to
127.0.0.1. The images are synthetic smears (224 px JPEGs, as raw data comes).
Without ``--model-uri``, a "small 4-layer CNN at 128 px" (``simple-cnn``, its
random initial weights: speed does not depend on them; one forward pass an
image unless ``--tta``) is registered in a scratch workspace as
``models:/leukolab@champion``.

    python benchmarks/serve.py                      # about 4 minutes on 2 cores
    python benchmarks/serve.py --seconds 20 --markdown
    python benchmarks/serve.py --variants ax --concurrency 1,8 --markdown   # the explained path against the plain one
    python benchmarks/serve.py --soak 300 --markdown                        # soak and the v2 route (about 7 minutes)

``--soak SECONDS`` (at most an hour) runs one API server instead: ``--soak-concurrency`` (32) clients keep
``POST /predict`` busy for that long and every error is counted (none is expected), with p50/p99 latency and the
server process's RSS before and after; then, on the same server at concurrency 8 for ``--seconds`` each, the Open
Inference Protocol's ``POST /v2/models/leukolab/infer`` against ``POST /predict`` (the v2 body as tritonclient sends
it by default, binary tensors, and as JSON with base64), and their requests/s ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONCURRENCY = (1, 8, 32)
MAX_SOAK_SECONDS = 3600
COMPARE_CONCURRENCY = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-uri", help="a registered model in $MLFLOW_TRACKING_URI (default: register simple-cnn at 128 px in a scratch workspace)")
    parser.add_argument("--image-size", type=int, default=128, help="input size of the scratch model")
    parser.add_argument("--tta", action="store_true", help="the scratch model averages the 8 rotations/mirrors, as the "
                                                           "published simple-cnn does (8 forward passes an image)")
    parser.add_argument("--experiment", default="simple-cnn", help="the scratch model's experiment (e.g. "
                        "resnet10t-classifier, the real profile's champion)")
    parser.add_argument("--tta-gate", type=float, help="tag the scratch model's version with this tta_gate: only "
                        "images whose plain confidence is under it take the 8 views (leukolab.predictor.gated_tta)")
    parser.add_argument("--tta-share", type=float, help="instead of --tta-gate: the gate under which this share of "
                        "the benchmark's images falls (their plain confidence by the scratch model), e.g. 0.1")
    parser.add_argument("--images", type=int, default=64, help="distinct synthetic smears sent in turn")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per concurrency level")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each level")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="levels, comma-separated")
    parser.add_argument("--variants", default="abc", help="which of a, b, c, x to run")
    parser.add_argument("--markdown", action="store_true", help="also print a row for benchmarks/RESULTS.md")
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="soak mode (e.g. 300): one server, "
                        "--soak-concurrency clients for SECONDS, then v2 against /predict at concurrency 8")
    parser.add_argument("--soak-concurrency", type=int, default=32, help="clients of the soak (default: %(default)s)")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    if args.soak is not None and not 0 < args.soak <= MAX_SOAK_SECONDS:
        parser.error(f"--soak takes 1 to {MAX_SOAK_SECONDS} seconds")

    from leukolab.serving.app import ServingSettings

    max_batch = ServingSettings.from_env().max_batch_size
    images = synthetic_jpegs(args.images)
    with tempfile.TemporaryDirectory(prefix="leukolab-serve-bench-") as scratch:
        if args.model_uri:
            model_uri = args.model_uri
        else:
            os.environ["LEUKOLAB_WORKSPACE"] = scratch
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"
            model_uri = register_scratch_model(args.image_size, args.tta, images, args.experiment, args.tta_gate,
                                               args.tta_share)
        print(f"{model_uri}, {len(images)} JPEGs of 224 px; {os.cpu_count()} CPUs, {platform.machine()}, "
              f"load average {os.getloadavg()[0]:.2f}; Python {platform.python_version()}")
        if args.soak is not None:
            soak_and_compare(model_uri, scratch, images, args)
            return
        results: dict[str, dict[int, dict]] = {}
        if "a" in args.variants:
            results["a"] = measure_server("(a) leukolab API", start_api(model_uri, scratch), api_request, images, levels, args)
        if "b" in args.variants:
            results["b"] = measure_server("(b) mlflow models serve", start_mlflow(model_uri, scratch), mlflow_request, images, levels, args)
        if "c" in args.variants:
            results["c"] = raw_limit(model_uri, images, max_batch, args.seconds)
        if "x" in args.variants:
            results["x"] = measure_server("(x) leukolab API, explain=true", start_api(model_uri, scratch),
                                          functools.partial(api_request, explain=True), images, levels, args)
    report(results, levels, max_batch, args.markdown)


# --- inputs and model ----------------------------------------------------------------------------------

def synthetic_jpegs(count: int) -> list[bytes]:
    """``count`` synthetic smears of the four classes as JPEG (quality 95) bytes."""
    from PIL import Image

    from leukolab.data.synthetic.smears import CLASS_NAMES, image_rng, render_smear

    jpegs = []
    for i in range(count):
        name = CLASS_NAMES[i % len(CLASS_NAMES)]
        image, _ = render_smear(image_rng(0, name, i), name, 224)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
        jpegs.append(buffer.getvalue())
    return jpegs


def register_scratch_model(image_size: int, tta: bool, images: list[bytes], experiment_name: str = "simple-cnn",
                           tta_gate: float | None = None, tta_share: float | None = None) -> str:
    """Log ``experiment_name`` (random weights; test-time augmentation only with ``tta``, gated by ``tta_gate``, or by
    the gate that sends ``tta_share`` of ``images`` through the eight views) as ``leukolab@champion``."""
    import mlflow

    from leukolab.config.experiment import load_experiment
    from leukolab.data.synthetic.smears import CLASS_NAMES
    from leukolab.models.factory import build_model
    from leukolab.predictor.smear_model import SmearModel, log_smear_model
    from leukolab.publishing.registry import register
    from leukolab.tracking import configure

    configure()
    experiment = load_experiment(experiment_name, {"inference": {"tta": tta}})
    meta = {"experiment": experiment, "class_names": list(CLASS_NAMES), "image_size": image_size,
            "mean": [0.8, 0.65, 0.7], "std": [0.15, 0.2, 0.15], "temperature": 1.0}
    network = build_model(experiment, len(CLASS_NAMES)).eval()
    if tta_share is not None:
        tta_gate = gate_for_share(SmearModel(network, meta), images, tta_share)
    with mlflow.start_run(run_name="serve-benchmark"):
        logged = log_smear_model(network, meta, images[:2])
    tags = {} if tta_gate is None else {"tta_gate": repr(tta_gate)}
    version = register(logged.model_uri, "leukolab", "champion", tags)
    return f"models:/{version.name}@champion"


def gate_for_share(model, images: list[bytes], share: float) -> float:
    """The ``tta_gate`` under which ``share`` of ``images`` falls: the quantile of their plain confidences."""
    from PIL import Image

    model.tta_gate = 0.0  # no image under the gate: plain answers
    answers = model.predict_images([Image.open(io.BytesIO(data)) for data in images])
    confidences = np.sort([answer["confidence"] for answer in answers])
    below = int(round(share * len(confidences)))
    gate = float(confidences[below]) if below < len(confidences) else float(confidences[-1]) + 1e-6
    print(f"tta_gate {gate:.6f}: {below} of {len(confidences)} images under it (share {below / len(confidences):.2f})")
    return gate


# --- servers -------------------------------------------------------------------------------------------

def start_api(model_uri: str, scratch: str):
    from leukolab.serving.launch import start_server

    def start():
        server = start_server(model_uri, log_path=Path(scratch) / "api.log", timeout=180)
        return server.url, server.process, server.stop
    return start


def start_mlflow(model_uri: str, scratch: str):
    import httpx

    from leukolab.processes.background import Background, free_port, wait_until_ready

    def answers(url: str) -> bool:
        try:
            return httpx.get(url, timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def start():
        port = free_port("127.0.0.1")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        server = Background.start([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                                   "local", "--host", "127.0.0.1", "--port", str(port)], Path(scratch) / "mlflow-serve.log",
                                  "mlflow models serve", url=f"http://127.0.0.1:{port}", env=env, grace=15)
        wait_until_ready(lambda: answers(f"{server.url}/ping"), [server], 180, interval=0.5)
        return server.url, server.process, server.stop
    return start


def api_request(url: str, image: bytes, explain: bool = False) -> tuple[str, bytes, dict]:
    from leukolab.serving.client import image_upload

    return (f"{url}/predict" + ("?explain=true" if explain else ""), *image_upload(image))


def v2_request(url: str, image: bytes, binary: bool = True) -> tuple[str, bytes, dict]:
    """An Open Inference Protocol request for one image: binary tensors (tritonclient's default), or all JSON."""
    tensor = {"name": "image", "datatype": "BYTES", "shape": [1]}
    if not binary:
        body = json.dumps({"inputs": [{**tensor, "data": [base64.b64encode(image).decode()]}]}).encode()
        return f"{url}/v2/models/leukolab/infer", body, {"Content-Type": "application/json"}
    raw = len(image).to_bytes(4, "little") + image
    head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return (f"{url}/v2/models/leukolab/infer", head + raw,
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))})


def mlflow_request(url: str, image: bytes) -> tuple[str, bytes, dict]:
    payload = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(image).decode()]]}}
    return f"{url}/invocations", json.dumps(payload).encode(), {"Content-Type": "application/json"}


# --- measurements ----------------------------------------------------------------------------------

def measure_server(label: str, start, make_request, images: list[bytes], levels: list[int], args) -> dict[int, dict]:
    """Start a server, check one answer, then measure each concurrency level; stop the server."""
    import psutil

    started = time.perf_counter()
    url, process, stop = start()
    print(f"{label}: ready in {time.perf_counter() - started:.1f} s")
    try:
        requests = [make_request(url, image) for image in images]
        check_answer(requests[0])
        results = {}
        server = psutil.Process(process.pid)
        for level in levels:
            asyncio.run(load(requests, level, args.warmup))
            cpu_before = cpu_seconds(server)
            results[level] = asyncio.run(load(requests, level, args.seconds))
            results[level]["server_cpu_ms"] = 1000 * (cpu_seconds(server) - cpu_before) / max(results[level]["requests"], 1)
            r = results[level]
            if r["errors"]:
                raise RuntimeError(f"{label} at concurrency {level}: {r['errors']} requests failed, e.g. {r['first_error']}")
            print(f"  concurrency {level:>2}: {r['rps']:7.1f} requests/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                  f"server CPU {r['server_cpu_ms']:5.1f} ms/request  ({r['requests']} requests, load {os.getloadavg()[0]:.1f})")
    finally:
        stop()
    return results


def cpu_seconds(process) -> float:
    """User + system CPU seconds of a process and its children (``mlflow models serve`` runs uvicorn as a child)."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        times = member.cpu_times()
        total += times.user + times.system
    return total


def check_answer(request: tuple[str, bytes, dict], expect: str = "Benign") -> None:
    import httpx

    url, body, headers = request
    response = httpx.post(url, content=body, headers=headers, timeout=60, trust_env=False)
    if response.status_code != 200 or expect not in response.text:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
    if "explain=true" in url and not response.json().get("heatmap_png"):
        raise RuntimeError(f"{url} answered without a heatmap_png")


async def load(requests: list[tuple[str, bytes, dict]], concurrency: int, seconds: float, timeout: float = 120.0,
               retry_after: bool = False) -> dict:
    """Keep ``concurrency`` requests in flight for ``seconds`` (each within ``timeout`` s; with ``retry_after``, a
    client answered 503 waits its ``Retry-After`` before the next): requests/s and p50/p99 of the 200s, the
    errors (other statuses, failed connections, timeouts) with the first one's description, and what
    ``benchmarks/overload.py`` counts: the 503s' latencies and ``Retry-After`` values, other statuses, timeouts."""
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []
    rejected: list[float] = []
    other = 0
    timeouts = 0
    retry_values: set[str] = set()
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async def client(offset: int) -> None:
            nonlocal other, timeouts
            i = offset
            while time.perf_counter() < deadline:
                url, body, headers = requests[i % len(requests)]
                sent = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        took = time.perf_counter() - sent
                        if response.status == 200:
                            latencies.append(took)
                        else:
                            errors.append(f"{url} answered {response.status}")
                        if response.status == 503 and retry_after:
                            rejected.append(took)
                            retry_values.add(response.headers.get("Retry-After", "missing"))
                            await asyncio.sleep(float(response.headers.get("Retry-After", 1)))  # as asked
                        elif response.status != 200:
                            other += 1
                except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                    timeouts += isinstance(error, (asyncio.TimeoutError, aiohttp.ServerTimeoutError))
                    errors.append(f"{url}: {type(error).__name__} {error}")
                i += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(client(offset) for offset in range(concurrency)))
        elapsed = time.perf_counter() - began
    quantiles = np.quantile(latencies, [0.5, 0.99]) * 1000 if latencies else [float("nan")] * 2
    return {"requests": len(latencies) + len(errors), "rps": len(latencies) / elapsed, "p50_ms": float(quantiles[0]),
            "p99_ms": float(quantiles[1]), "errors": len(errors), "first_error": errors[0] if errors else None,
            "rejected": len(rejected), "rejected_p99_ms": float(np.quantile(rejected, 0.99) * 1000) if rejected else float("nan"),
            "other_statuses": other, "client_timeouts": timeouts, "retry_after": sorted(retry_values)}


def soak_and_compare(model_uri: str, scratch: str, images: list[bytes], args) -> None:
    """One API server: the soak at ``--soak-concurrency`` for ``--soak`` seconds, then v2 against /predict at
    concurrency 8 (interleaved twice, ``--seconds`` each), each with its own warm-up."""
    import psutil

    url, process, stop = start_api(model_uri, scratch)()
    try:
        server = psutil.Process(process.pid)
        routes = {"predict": [api_request(url, image) for image in images],
                  "v2 binary": [v2_request(url, image) for image in images],
                  "v2 json": [v2_request(url, image, binary=False) for image in images]}
        for requests in routes.values():
            check_answer(requests[0], expect="Benign" if requests is routes["predict"] else "probabilities")
        asyncio.run(load(routes["predict"], args.soak_concurrency, args.warmup))
        rss_start = server.memory_info().rss
        soak = asyncio.run(load(routes["predict"], args.soak_concurrency, args.soak))
        rss_end = server.memory_info().rss
        first = f" (first: {soak['first_error']})" if soak["errors"] else ""
        print(f"soak: {soak['requests']} requests in {args.soak:.0f} s at concurrency {args.soak_concurrency}, "
              f"{soak['errors']} errors{first}; "
              f"p50 {soak['p50_ms']:.1f} ms, p99 {soak['p99_ms']:.1f} ms; server RSS {rss_start / 2**20:.0f} -> "
              f"{rss_end / 2**20:.0f} MiB ({100 * (rss_end / rss_start - 1):+.1f}%); load {os.getloadavg()[0]:.1f}")
        rates: dict[str, list[dict]] = {name: [] for name in routes}
        for _ in range(2):
            for name, requests in routes.items():
                asyncio.run(load(requests, COMPARE_CONCURRENCY, args.warmup))
                rates[name].append(asyncio.run(load(requests, COMPARE_CONCURRENCY, args.seconds)))
        rps = {name: statistics.mean(run["rps"] for run in runs) for name, runs in rates.items()}
        p99 = {name: max(run["p99_ms"] for run in runs) for name, runs in rates.items()}
        failed = {name: sum(run["errors"] for run in runs) for name, runs in rates.items()}
        for name in routes:
            print(f"  concurrency {COMPARE_CONCURRENCY} {name:>9}: {rps[name]:7.1f} requests/s  p99 {p99[name]:7.1f} ms  "
                  f"{failed[name]} errors")
        print(f"v2/predict requests/s at concurrency {COMPARE_CONCURRENCY}: binary {rps['v2 binary'] / rps['predict']:.2f}, "
              f"json {rps['v2 json'] / rps['predict']:.2f}")
    finally:
        stop()
    if args.markdown:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        print("| " + " | ".join([
            time.strftime("%Y-%m-%d"), str(os.cpu_count()), f"{os.getloadavg()[0]:.1f}",
            f"{args.soak:.0f} s at {args.soak_concurrency}", str(soak["requests"]), str(soak["errors"]),
            f"{soak['p50_ms']:.0f} / {soak['p99_ms']:.0f}", f"{rss_start / 2**20:.0f} → {rss_end / 2**20:.0f}",
            f"{rps['predict']:.1f} / {rps['v2 binary']:.1f} / {rps['v2 json']:.1f}",
            f"{rps['v2 binary'] / rps['predict']:.2f} / {rps['v2 json'] / rps['predict']:.2f}", commit]) + " |")


def raw_limit(model_uri: str, images: list[bytes], batch_size: int, seconds: float) -> dict:
    """Images/s of decode + preprocess + batched forward (+ answers) in this process, batches of ``batch_size``."""
    from leukolab.images import decode_image
    from leukolab.predictor.uri import load_smear_model

    model = load_smear_model(model_uri)
    batches = [[images[(start + i) % len(images)] for i in range(batch_size)] for start in range(0, len(images), batch_size)]

    def run_batch(batch: list[bytes]) -> None:
        model.predict_prepared([model.prepare(decode_image(data)) for data in batch])

    for batch in batches[:2]:  # warm-up
        run_batch(batch)
    rates, done, began = [], 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        started = time.perf_counter()
        run_batch(batches[done % len(batches)])
        rates.append(batch_size / (time.perf_counter() - started))
        done += 1
    rate = done * batch_size / (time.perf_counter() - began)
    print(f"(c) raw limit, batches of {batch_size}: {rate:.1f} images/s (median batch {statistics.median(rates):.1f} images/s, "
          f"{done} batches, load {os.getloadavg()[0]:.1f})")
    return {"images_per_s": rate}


def report(results: dict, levels: list[int], max_batch: int, markdown: bool) -> None:
    a, b, c, x = results.get("a"), results.get("b"), results.get("c"), results.get("x")
    for level in levels:
        parts = [f"concurrency {level:>2}:"]
        if a and x:
            parts.append(f"explained/plain requests/s {x[level]['rps'] / a[level]['rps']:.2f}")
            parts.append(f"p99 explained/plain {x[level]['p99_ms'] / a[level]['p99_ms']:.2f}")
        if a and b:
            parts.append(f"a/b {a[level]['rps'] / b[level]['rps']:.2f}")
            parts.append(f"p99 a/b {a[level]['p99_ms'] / b[level]['p99_ms']:.2f}")
        if a and c:
            parts.append(f"a/c {a[level]['rps'] / c['images_per_s']:.2f}")
        print("  ".join(parts))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if markdown and a and x:
        cells = [time.strftime("%Y-%m-%d"), str(os.cpu_count()), f"{os.getloadavg()[0]:.1f}"]
        cells += [" / ".join(f"{r[level]['rps']:.1f}" for level in levels) for r in (a, x)]
        cells += [" / ".join(f"{x[level]['rps'] / a[level]['rps']:.2f}" for level in levels)]
        cells += [" / ".join(f"{r[level]['p99_ms']:.0f}" for level in levels) for r in (a, x)]
        cells += [" / ".join(f"{r[level]['server_cpu_ms']:.1f}" for level in levels) for r in (a, x)]
        cells += [commit]
        print("| " + " | ".join(cells) + " |")
    if markdown and a and b and c:
        cells = [time.strftime("%Y-%m-%d"), str(os.cpu_count()), f"{os.getloadavg()[0]:.1f}"]
        cells += [" / ".join(f"{r[level]['rps']:.0f}" for level in levels) for r in (a, b)]
        cells += [f"{c['images_per_s']:.0f} (batch {max_batch})"]
        cells += [" / ".join(f"{a[level]['rps'] / b[level]['rps']:.2f}" for level in levels)]
        cells += [" / ".join(f"{a[level]['rps'] / c['images_per_s']:.2f}" for level in levels)]
        cells += [" / ".join(f"{r[level]['p99_ms']:.0f}" for level in levels) for r in (a, b)]
        cells += [commit]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
