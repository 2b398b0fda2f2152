"""Admission: how many prediction requests the API holds at once, and the drain that ends it.

A prediction request (``/predict``, ``/predict/batch``, v2 ``infer``) is admitted when fewer than
``max_pending`` are held (queued for the micro-batcher or in a forward pass); beyond that it is refused at once
with 503, ``Retry-After`` and the reason ``overloaded`` (counted in ``leukolab_rejected_requests_total``), so
clients past the server's capacity get a fast answer instead of a timeout and the latency of the admitted ones
stays bounded. Health, readiness and metrics never pass through here.

On SIGTERM the server :meth:`Admission.begin_drain`\\ s: readiness answers 503 ``draining`` at once, new
predictions are refused (503 ``draining``), and :meth:`Admission.drained` returns once the held ones are done or
the deadline has passed (:mod:`leukolab.serving.launch` then lets uvicorn exit).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from leukolab.serving.errors import ApiError
from leukolab.serving.metrics import ServingMetrics


class Admission:
    """Counts the prediction requests held; refuses those past ``max_pending`` (0: no limit) or during a drain."""

    def __init__(self, max_pending: int, metrics: ServingMetrics, retry_after_s: float = 1.0):
        if max_pending < 0:
            raise ValueError(f"max_pending must be 0 (no limit) or more, got {max_pending}")
        self.max_pending, self.metrics, self.retry_after_s = max_pending, metrics, retry_after_s
        self.pending = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def admit(self) -> None:
        """Hold one more request, or raise the 503 :class:`ApiError` (with ``Retry-After``) that refuses it."""
        if self.draining:
            self._refuse("the server is shutting down; send the request to another replica or retry later", "draining")
        if self.max_pending and self.pending >= self.max_pending:
            self._refuse(f"the server holds {self.pending} prediction requests, its limit (max_pending)", "overloaded")
        self.pending += 1
        self.metrics.pending.set(self.pending)
        self._idle.clear()

    def _refuse(self, detail: str, reason: str) -> None:
        self.metrics.observe_rejection(reason)
        retry_after = str(max(1, math.ceil(self.retry_after_s)))
        raise ApiError(503, f"{detail}; retry after {retry_after} s", reason, headers={"Retry-After": retry_after})

    def release(self) -> None:
        self.pending -= 1
        self.metrics.pending.set(self.pending)
        if not self.pending:
            self._idle.set()

    def begin_drain(self) -> None:
        """Stop admitting; readiness answers 503 from now on."""
        self.draining = True

    async def drained(self, deadline_s: float) -> bool:
        """Wait until no request is held, at most ``deadline_s`` seconds; whether none is."""
        try:
            await asyncio.wait_for(self._idle.wait(), deadline_s)
        except TimeoutError:
            return False
        return True


async def admitted(request: Request) -> AsyncIterator[None]:
    """Hold a place for this prediction request until its answer is made (a 503 when there is none)."""
    admission: Admission = request.app.state.admission
    admission.admit()
    try:
        yield
    finally:
        admission.release()


Admitted = Annotated[None, Depends(admitted)]
