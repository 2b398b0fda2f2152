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
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve import api_request, register_scratch_model, synthetic_jpegs  # noqa: E402


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
        asyncio.run(load(requests, 8, 3.0, args.timeout))  # warm-up below capacity
        result = asyncio.run(load(requests, args.concurrency, args.seconds, args.timeout))
    print(f"max_pending {max_pending}: {result}")
    return result


async def load(requests: list, concurrency: int, seconds: float, timeout: float) -> dict:
    """``concurrency`` clients for ``seconds``: latencies of 200s and 503s, other statuses, client timeouts."""
    import aiohttp

    accepted, rejected, other, timeouts = [], [], [], 0
    retry_after: set[str] = set()
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async def client(offset: int) -> None:
            nonlocal timeouts
            i = offset
            while time.perf_counter() < deadline:
                url, body, headers = requests[i % len(requests)]
                sent = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        took = time.perf_counter() - sent
                        if response.status == 503:
                            rejected.append(took)
                            retry_after.add(response.headers.get("Retry-After", "missing"))
                            await asyncio.sleep(float(response.headers.get("Retry-After", 1)))  # as asked
                        else:
                            (accepted if response.status == 200 else other).append(took)
                except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
                    timeouts += 1
                i += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(client(offset) for offset in range(concurrency)))
        elapsed = time.perf_counter() - began

    def p(values: list[float], q: float) -> float:
        return float(np.quantile(values, q) * 1000) if values else float("nan")
    return {"accepted_rps": len(accepted) / elapsed, "accepted_p50_ms": p(accepted, 0.5), "accepted_p99_ms": p(accepted, 0.99),
            "rejected": len(rejected), "rejected_p99_ms": p(rejected, 0.99), "other_statuses": len(other),
            "client_timeouts": timeouts, "retry_after": sorted(retry_after)}


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
