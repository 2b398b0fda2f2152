"""SIGTERM as Ctrl-C: a run stopped by ``timeout``, a CI runner or a service manager ends as an interrupted one.

Python turns SIGINT into ``KeyboardInterrupt`` in the main thread; :func:`sigterm_as_interrupt` does the same for
SIGTERM with :class:`Terminated` (a ``KeyboardInterrupt``), so the runner's one stopping path kills the running
notebooks with everything they started and marks the run ``killed``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM."""


def describe(stop: KeyboardInterrupt) -> str:
    """What stopped the run, in words: ``SIGTERM`` or ``Ctrl-C``."""
    return "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, the first SIGTERM raises :class:`Terminated` in the main thread and later ones are only
    logged (the clean-up it starts is not cut short); the previous handler is back afterwards. Outside the main
    thread, where Python cannot handle signals, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def handle(signum, frame) -> None:
        received.append(signum)
        if len(received) == 1:
            raise Terminated()
        log.warning("SIGTERM again: still stopping the running stages")

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
