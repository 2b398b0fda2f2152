"""The real API server over HTTP (``start_server``): it answers, says why a model cannot load, and at concurrency
32 answers everything and holds its memory."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sample_images import IMAGE_MODES, NOISE_JPEG, SMEAR, solid_png
from serving_helpers import metric

from leukolab.serving.app import ServingSettings
from leukolab.serving.launch import start_server


@pytest.mark.integration
def test_real_server_answers_over_http(model_env, tmp_path):
    with start_server(model_env["uri"], log_path=tmp_path / "server.log", timeout=90) as server:
        response = httpx.post(f"{server.url}/predict", files={"file": ("smear.jpg", SMEAR)}, timeout=30)
        assert response.status_code == 200 and response.json()["model_version"] == "leukolab/1"
        assert "leukolab_model_info" in httpx.get(f"{server.url}/metrics").text
    assert server.process.poll() is not None


@pytest.mark.integration
def test_start_server_reports_a_model_that_cannot_load(model_env):
    with pytest.raises(RuntimeError, match="could not load the model") as failure:
        start_server("models:/no-such-model@champion", timeout=90)
    assert "no-such-model" in str(failure.value)


LOAD_CONCURRENCY, LOAD_SECONDS, WARMUP_SECONDS = 32, 30, 5


async def keep_busy(url: str, seconds: float, uploads: list[tuple[bytes, int]]) -> dict[int, list[int]]:
    """``LOAD_CONCURRENCY`` clients posting ``uploads`` in turn for ``seconds``: the statuses seen per upload."""
    seen: dict[int, list[int]] = {i: [] for i in range(len(uploads))}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=LOAD_CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, trust_env=False) as http:
        async def client(offset: int) -> None:
            i = offset
            while time.monotonic() < deadline:
                which = i % len(uploads)
                response = await http.post("/predict", files={"file": ("upload", uploads[which][0])})
                seen[which].append(response.status_code)
                i += 1
        await asyncio.gather(*(client(offset) for offset in range(LOAD_CONCURRENCY)))
    return seen


@pytest.mark.integration
def test_load_at_concurrency_32_answers_everything_and_holds_its_memory(model_env, tmp_path):
    """32 clients for 30 s, one request in eight a bad file: every answer as expected, RSS growth under 10%.

    Growth is measured after a warm-up that runs every batch size once: the allocator and oneDNN keep buffers per
    input shape (a one-time cost, flat afterwards), which a leak would not be.
    """
    import psutil

    uploads = [(SMEAR, 200), (NOISE_JPEG, 200), (IMAGE_MODES["rgba"](), 200), (solid_png((120, 60, 140), (300, 200)), 200),
               (IMAGE_MODES["animated gif"](), 200), (NOISE_JPEG[:1500], 400), (b"not an image", 415), (SMEAR, 200)]
    with start_server(model_env["uri"], log_path=tmp_path / "server.log", timeout=90) as server:
        process = psutil.Process(server.process.pid)
        for size in range(1, ServingSettings().max_batch_size + 1):  # one request at a time: a pass of each size
            files = [("files", ("smear.jpg", SMEAR))] * size
            assert httpx.post(f"{server.url}/predict/batch", files=files, timeout=60, trust_env=False).status_code == 200
        asyncio.run(keep_busy(server.url, WARMUP_SECONDS, uploads))
        rss_before = process.memory_info().rss
        seen = asyncio.run(keep_busy(server.url, LOAD_SECONDS, uploads))
        rss_after = process.memory_info().rss
        text = httpx.get(f"{server.url}/metrics", trust_env=False).text
        assert server.process.poll() is None, server.log_tail()
    for which, statuses in seen.items():
        assert statuses and set(statuses) == {uploads[which][1]}, (which, sorted(set(statuses)))
    answered = sum(len(statuses) for which, statuses in seen.items() if uploads[which][1] == 200)
    assert metric(text, "leukolab_requests_total", route="/predict", status="500") == 0
    assert metric(text, "leukolab_batch_size_count") < metric(text, "leukolab_batch_size_sum")  # passes were shared
    assert metric(text, "leukolab_batch_size_sum") >= answered
    print(f"{answered} predictions in {LOAD_SECONDS} s at concurrency {LOAD_CONCURRENCY}; "
          f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB")
    assert rss_after < 1.10 * rss_before
