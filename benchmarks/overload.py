"""The API past its capacity: a bounded queue (fast 503s) against an unbounded one, at the same concurrency.

One scratch model (``serve.py``'s: simple-cnn, random weights, 128 px) and two API servers in turn, one with
``LEUKOLAB_MAX_PENDING=--max-pending`` and one with no limit (0). A client in this process keeps ``--concurrency``
requests to ``POST /predict`` in flight for ``--seconds`` each (every request with a ``--timeout`` s client
timeout, waiting ``Retry-After`` after a 503, every request to 127.0.0.1, bounded in time) and counts answers by
status: the accepted ones' requests/s
and p50/p99 latency, the 503s' p99 latency (with ``Retry-After``), and client timeouts. Run on a busy shared
machine, compare the two rows, not the absolute figures.

    python benchmarks/overload.py                    # about 2 minutes
    python benchmarks/overload.py --concurrency 256 --max-pending 16 --markdown
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve import api_request, load, register_scratch_model, synthetic_jpegs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--max-pending", type=int, default=32, help="the bounded server's LEUKOLAB_MAX_PENDING")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=5.0, help="each request's client timeout, in seconds")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    images = synthetic_jpegs(32)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="leukolab-overload-") as scratch:
        os.environ["LEUKOLAB_WORKSPACE"] = scratch
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"
        model_uri = register_scratch_model(128, False, images[:2])
        for label, limit in ((f"bounded (max_pending {args.max_pending})", args.max_pending), ("unbounded", 0)):
            rows[label] = measure(model_uri, scratch, limit, images, args)
    report(rows, args)


def measure(model_uri: str, scratch: str, max_pending: int, images: list[bytes], args) -> dict:
    from leukolab.serving.launch import start_server

    os.environ["LEUKOLAB_MAX_PENDING"] = str(max_pending)
    with start_server(model_uri, log_path=Path(scratch) / f"api-{max_pending}.log", timeout=180) as server:
        requests = [api_request(server.url, image) for image in images]
        asyncio.run(load(requests, 8, 3.0, args.timeout, retry_after=True))  # warm-up below capacity
        measured = asyncio.run(load(requests, args.concurrency, args.seconds, args.timeout, retry_after=True))
    result = {"accepted_rps": measured["rps"], "accepted_p50_ms": measured["p50_ms"], "accepted_p99_ms": measured["p99_ms"],
              **{key: measured[key] for key in ("rejected", "rejected_p99_ms", "other_statuses", "client_timeouts", "retry_after")}}
    print(f"max_pending {max_pending}: {result}")
    return result


def report(rows: dict, args) -> None:
    if not args.markdown:
        return
    print(f"\n| server (concurrency {args.concurrency}, client timeout {args.timeout:g} s) | accepted req/s | "
          "accepted p50 / p99 ms | 503s | 503 p99 ms | client timeouts |")
    print("|---|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['accepted_rps']:.1f} | {r['accepted_p50_ms']:.0f} / {r['accepted_p99_ms']:.0f} | "
              f"{r['rejected']} | {r['rejected_p99_ms']:.0f} | {r['client_timeouts']} |")


if __name__ == "__main__":
    main()
