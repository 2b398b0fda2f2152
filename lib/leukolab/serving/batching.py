"""Micro-batching: concurrent requests' items grouped into forward passes that run in worker threads.

Requests :meth:`MicroBatcher.submit` one item each (an uploaded file) and await its answer. A single loop waits for
a free worker, takes the oldest waiting item and those behind it, and hands the list to ``predict_batch`` in that
worker's thread, which decodes the files and runs the forward pass, so the event loop only reads requests and
writes answers. The queue is first in, first out: a batch always starts with the oldest item, so an item waits for
no more passes than there are batches ahead of it.

The dispatch rule: an item that finds nothing else waiting goes at once, so a lone request costs what it would on an
unbatched server. Items waiting together are shared evenly among the idle workers (each takes its share, at most
``max_batch_size``), so a burst keeps every worker busy instead of queueing behind one full batch; when the last
idle worker takes a burst, it waits at most ``max_wait_s`` for its stragglers. Under load the items that arrive
during the passes make up the next batches: throughput grows with concurrency, and no request waits for a batch
that is not coming.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)


class MicroBatcher:
    """Groups :meth:`submit` calls into calls of ``predict_batch(items) -> answers`` (one answer per item, in order;
    an answer that is an exception fails its own item alone), at most ``workers`` at a time."""

    def __init__(self, predict_batch: Callable[[list], list], max_batch_size: int = 32, max_wait_s: float = 0.002,
                 workers: int = 1):
        if max_batch_size < 1 or workers < 1:
            raise ValueError(f"max_batch_size and workers must be at least 1, got {max_batch_size} and {workers}")
        self.predict_batch, self.max_batch_size, self.max_wait_s = predict_batch, max_batch_size, max_wait_s
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future]] = asyncio.Queue()
        self._free_workers = asyncio.Semaphore(workers)
        self._idle_workers = workers
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
            await self._free_workers.acquire()  # while all workers are busy, waiting items make up bigger batches
            batch = await self._next_batch()
            batch = [(item, future) for item, future in batch if not future.done()]  # drop cancelled requests
            if not batch:
                self._free_workers.release()
                continue
            self._idle_workers -= 1
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
            answers = [error] * len(batch)
        finally:
            self._idle_workers += 1
            self._free_workers.release()
        for (_, future), answer in zip(batch, answers):
            if future.done():
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _next_batch(self) -> list[tuple[Any, asyncio.Future]]:
        """The oldest waiting item and those behind it: this worker's even share of them among the idle workers, at
        most ``max_batch_size``. A lone item goes at once; the last idle worker waits up to ``max_wait_s`` for a
        burst's stragglers."""
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        share = min(self.max_batch_size, math.ceil((1 + self._queue.qsize()) / self._idle_workers))
        while len(batch) < share:
            batch.append(self._queue.get_nowait())
        if len(batch) == 1 or self._idle_workers > 1:  # nothing else was waiting, or other workers take the rest
            return batch
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch
