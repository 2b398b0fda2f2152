"""The micro-batcher on its own: grouping, order, errors, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from leukolab.serving.batching import MicroBatcher


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=10))


class Recorder:
    """A predict_batch that squares numbers and notes each batch and its thread."""

    def __init__(self, fail_on: int | None = None):
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.threads.add(threading.current_thread().name)
        if self.fail_on in items:
            raise ValueError(f"cannot take {self.fail_on}")
        return [item * item for item in items]


async def submit_all(batcher: MicroBatcher, items: list[int]) -> list:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(item) for item in items), return_exceptions=True)
    finally:
        await batcher.stop()


def test_waiting_items_are_grouped_up_to_the_maximum_in_order():
    recorder = Recorder()
    answers = run(submit_all(MicroBatcher(recorder, max_batch_size=4, max_wait_s=0), list(range(10))))
    assert answers == [i * i for i in range(10)]
    assert recorder.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(recorder.threads) == 1 and recorder.threads.pop().startswith("leukolab-inference")


def test_a_lone_item_goes_at_once_however_long_a_burst_may_wait():
    recorder = Recorder()

    async def lone_requests():
        batcher = MicroBatcher(recorder, max_batch_size=8, max_wait_s=3.0)
        batcher.start()
        seconds = []
        for item in (1, 2):  # one after the other: each finds nothing else waiting
            started = time.perf_counter()
            assert await batcher.submit(item) == item * item
            seconds.append(time.perf_counter() - started)
        await batcher.stop()
        return seconds

    assert max(run(lone_requests())) < 1.0  # the old rule held each for max_wait_s (3 s)
    assert recorder.batches == [[1], [2]]


def test_a_burst_is_batched_and_waits_for_its_stragglers_only_up_to_max_wait():
    recorder = Recorder()

    async def bursts():
        batcher = MicroBatcher(recorder, max_batch_size=8, max_wait_s=0.3)
        batcher.start()
        burst = [asyncio.ensure_future(batcher.submit(item)) for item in (1, 2)]
        await asyncio.sleep(0.03)
        burst.append(asyncio.ensure_future(batcher.submit(3)))  # a straggler within the wait: same pass
        answers = await asyncio.gather(*burst)
        started = time.perf_counter()
        answers += await asyncio.gather(*(batcher.submit(item) for item in (4, 5)))  # a burst that gets no straggler
        waited = time.perf_counter() - started
        await batcher.stop()
        return answers, waited

    answers, waited = run(bursts())
    assert answers == [1, 4, 9, 16, 25] and recorder.batches == [[1, 2, 3], [4, 5]]
    assert 0.25 < waited < 2.0  # it waited out max_wait_s for more, no longer


def test_a_failing_batch_fails_its_items_and_the_batcher_goes_on():
    recorder = Recorder(fail_on=5)

    async def scenario():
        batcher = MicroBatcher(recorder, max_batch_size=4, max_wait_s=0)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(4, 10)), return_exceptions=True)
        results.append(await batcher.submit(2))
        await batcher.stop()
        return results

    results = run(scenario())
    assert all(isinstance(r, ValueError) for r in results[:4]) and results[4:] == [64, 81, 4]


def test_answers_must_match_the_items():
    async def scenario():
        batcher = MicroBatcher(lambda items: items[:-1], max_batch_size=4, max_wait_s=0)
        return await submit_all(batcher, [1, 2])

    assert all(isinstance(result, RuntimeError) and "1 answers for 2 items" in str(result) for result in run(scenario()))


def test_submit_needs_a_running_batcher_and_the_size_must_be_positive():
    with pytest.raises(RuntimeError, match="not running"):
        run(MicroBatcher(Recorder()).submit(1))
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(Recorder(), max_batch_size=0)


def test_workers_run_batches_at_the_same_time():
    both_running = threading.Barrier(2, timeout=5)  # a lone worker would wait here and fail

    def predict_batch(items):
        both_running.wait()
        return items

    answers = run(submit_all(MicroBatcher(predict_batch, max_batch_size=2, max_wait_s=0, workers=2), [1, 2, 3, 4]))
    assert answers == [1, 2, 3, 4]


def test_an_answer_that_is_an_exception_fails_its_item_alone():
    def predict_batch(items):
        return [ValueError(f"no {item}") if item == 2 else item * 10 for item in items]

    async def scenario():
        batcher = MicroBatcher(predict_batch, max_batch_size=4, max_wait_s=0)
        batcher.start()
        one, two, three = (asyncio.ensure_future(batcher.submit(item)) for item in (1, 2, 3))
        with pytest.raises(ValueError, match="no 2"):  # raised, not answered
            await two
        answers = await asyncio.gather(one, three)
        await batcher.stop()
        return answers

    assert run(scenario()) == [10, 30]


def test_waiting_items_are_shared_evenly_among_idle_workers_oldest_first():
    both_running = threading.Barrier(2, timeout=5)
    batches = []

    def predict_batch(items):
        batches.append(items)
        both_running.wait()
        return items

    answers = run(submit_all(MicroBatcher(predict_batch, max_batch_size=8, max_wait_s=0, workers=2), list(range(6))))
    assert answers == list(range(6))
    assert sorted(batches) == [[0, 1, 2], [3, 4, 5]]  # not one batch of six and an idle worker


def test_items_that_arrive_during_a_pass_make_up_the_next_batches_in_arrival_order():
    release = threading.Event()
    recorder = Recorder()

    def predict_batch(items):
        release.wait(5)
        return recorder(items)

    async def scenario():
        batcher = MicroBatcher(predict_batch, max_batch_size=4, max_wait_s=0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # the lone item is in its pass, which waits for release
        later = [asyncio.ensure_future(batcher.submit(item)) for item in range(1, 7)]
        await asyncio.sleep(0.05)
        release.set()
        answers = await asyncio.gather(first, *later)
        await batcher.stop()
        return answers

    assert run(scenario()) == [i * i for i in range(7)]
    assert recorder.batches == [[0], [1, 2, 3, 4], [5, 6]]
