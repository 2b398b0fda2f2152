"""A graceful drain on SIGTERM: uvicorn's server, told to stop only once the API has finished what it holds.

On SIGTERM the server does not close at once, as uvicorn's does: the app starts draining
(:meth:`~leukolab.serving.admission.Admission.begin_drain`: readiness answers 503 ``draining``, new predictions are
refused with 503), the requests already held run to their answers, and once none is left, or after
``drain_seconds``, uvicorn shuts down as usual and the process exits 0. A second SIGTERM, or SIGINT (Ctrl-C), stops
it as uvicorn would.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn

from leukolab.serving.admission import Admission

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """:class:`uvicorn.Server` with the drain above (``admission``: the app's)."""

    def __init__(self, config: uvicorn.Config, admission: Admission, drain_seconds: float):
        super().__init__(config)
        self.admission, self.drain_seconds = admission, drain_seconds
        self._drain: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._drain is not None:
            super().handle_exit(sig, frame)
            return
        # Not recorded as a captured signal: uvicorn would raise it again once stopped, and the exit code be 143.
        self.admission.begin_drain()
        log.info("SIGTERM: draining, not ready; finishing %d held prediction request(s) within %g s",
                 self.admission.pending, self.drain_seconds)
        self._drain = asyncio.get_running_loop().create_task(self._stop_when_drained())

    async def _stop_when_drained(self) -> None:
        if await self.admission.drained(self.drain_seconds):
            log.info("drained: every held request was answered; shutting down")
        else:
            log.warning("%d prediction request(s) still held after %g s (drain_seconds): shutting down without them",
                        self.admission.pending, self.drain_seconds)
        self.should_exit = True
