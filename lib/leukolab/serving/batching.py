"""Micro-batching: concurrent requests' images grouped into forward passes that run in worker threads.

Requests :meth:`MicroBatcher.submit` one prepared image each and await its
answer. A single loop waits for a free worker, takes the first waiting image,
then whatever else is waiting, up to ``max_batch_size``, and hands the list to
``predict_batch`` in that worker's thread, so the event loop keeps reading
requests (and decoding them in other threads) while the network runs.

The dispatch rule: an image that finds nothing else waiting goes at once, so
a lone request costs what it would on an unbatched server; when others were
waiting too (a burst), the batch waits at most ``max_wait_s`` for the rest of
the burst. Under load, the images that arrive during a pass make up the next
batch: throughput grows with concurrency, and no request waits for a batch
that is not coming.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)


class MicroBatcher:
    """Groups :meth:`submit` calls into calls of ``predict_batch(items) -> answers`` (one answer per item, in order),
    at most ``workers`` at a time."""

    def __init__(self, predict_batch: Callable[[list], list], max_batch_size: int = 32, max_wait_s: float = 0.002,
                 workers: int = 1):
        if max_batch_size < 1 or workers < 1:
            raise ValueError(f"max_batch_size and workers must be at least 1, got {max_batch_size} and {workers}")
        self.predict_batch, self.max_batch_size, self.max_wait_s = predict_batch, max_batch_size, max_wait_s
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future]] = asyncio.Queue()
        self._free_workers = asyncio.Semaphore(workers)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="leukolab-inference")
        self._task: asyncio.Task | None = None
        self._passes: set[asyncio.Task] = set()

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="leukolab-batcher")

    async def stop(self) -> None:
        """Stop the loop, fail what is still waiting, and let the workers finish their batches."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, *self._passes, return_exceptions=True)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, item: Any) -> Any:
        """The answer for ``item``, computed in a batch with the items submitted around the same time."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _run(self) -> None:
        while True:
            await self._free_workers.acquire()  # while all workers are busy, waiting items make up a bigger batch
            batch = await self._next_batch()
            batch = [(item, future) for item, future in batch if not future.done()]  # drop cancelled requests
            if not batch:
                self._free_workers.release()
                continue
            task = asyncio.create_task(self._answer(batch))
            self._passes.add(task)
            task.add_done_callback(self._passes.discard)

    async def _answer(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        """Run one batch in a worker thread and resolve its futures."""
        try:
            answers = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.predict_batch, [item for item, _ in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"predict_batch gave {len(answers)} answers for {len(batch)} items")
        except Exception as error:  # every request of the batch gets the error (a bug: they answer 500)
            log.exception("a batch of %d failed", len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        finally:
            self._free_workers.release()
        for (_, future), answer in zip(batch, answers):
            if not future.done():
                future.set_result(answer)

    async def _next_batch(self) -> list[tuple[Any, asyncio.Future]]:
        """The first waiting item and those waiting behind it, up to ``max_batch_size``; when there were any, also
        those that follow within ``max_wait_s``. A lone item goes at once."""
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if len(batch) == 1 or remaining <= 0:  # nothing else was waiting: no burst to wait for
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch
