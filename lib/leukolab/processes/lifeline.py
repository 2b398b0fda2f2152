"""Child processes that end with the process that launched them (a background API server, a notebook execution).

The launcher starts the child with :func:`child_environment` (as ``Background.start(..., follow_parent=True)``
does); the child calls :func:`follow_parent` first thing.
Two mechanisms, since each alone leaves a gap:

- **A watchdog thread** compares ``os.getppid()`` with the launcher's pid (``LEUKOLAB_PARENT_PID``) every
  ``interval`` seconds: an orphan is re-parented (to init or a sub-reaper), so the number changes the moment the
  launcher dies, however it died (SIGKILL included), whichever of its threads started the child. It needs the
  child's interpreter to run, and answers within ``interval``.
- **Linux's** ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` has the kernel signal the child at once. It fires when the
  *thread* that forked the child ends, not the process: a server started from a worker thread (a thread pool, a
  test's helper) would be stopped while its launcher lives on. So the launcher asks for it only when it launches
  from its main thread, whose end is the process's end (``LEUKOLAB_PARENT_DEATH_SIGNAL``). The child sets it on
  itself rather than in ``preexec_fn``, which can deadlock in a launcher with threads (a Jupyter kernel has
  several), and the watchdog's first look covers a launcher that died before the call.

Both variables are taken out of the child's environment, so its own children do not follow its launcher.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)
PARENT_PID = "LEUKOLAB_PARENT_PID"
DEATH_SIGNAL = "LEUKOLAB_PARENT_DEATH_SIGNAL"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) naming this process as the launcher a child started with it follows."""
    env = {**(os.environ if env is None else env), PARENT_PID: str(os.getpid())}
    if threading.current_thread() is threading.main_thread():
        env[DEATH_SIGNAL] = "1"
    else:
        env.pop(DEATH_SIGNAL, None)
    return env


def follow_parent(on_orphaned: Callable[[], None], interval: float = 0.5) -> bool:
    """Call ``on_orphaned`` (in a watchdog thread) once the launcher named by :func:`child_environment` is gone, and
    have SIGTERM sent at its death when it asked for that; False (and nothing watched) without a launcher named."""
    parent = int(os.environ.pop(PARENT_PID, "0") or 0)
    wants_signal = os.environ.pop(DEATH_SIGNAL, "") == "1"
    if not parent:
        return False
    if wants_signal and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d); the watchdog alone follows pid %d",
                        ctypes.get_errno(), parent)
    threading.Thread(target=_watch, args=(parent, on_orphaned, interval), name="leukolab-parent-watch",
                     daemon=True).start()
    return True


def _watch(parent: int, on_orphaned: Callable[[], None], interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    log.warning("the process that launched this one (pid %d) is gone: stopping", parent)
    on_orphaned()


def terminate_self(grace: float = 10.0) -> None:
    """An ``on_orphaned`` for servers: SIGTERM to this process (a graceful shutdown), then exit after ``grace``
    seconds if it is still running."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    log.error("still running %.0f s after SIGTERM: exiting", grace)
    os._exit(1)
