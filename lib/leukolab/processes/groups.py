"""Process groups and trees by pid: is any process of a group alive, stop groups (SIGTERM, then SIGKILL), a
process's descendants (those in sessions of their own too, as Jupyter kernels are) and killing them."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable

import psutil


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a process left. A zombie counts until its parent reaps it (once orphaned,
    init does), unless that parent is this process: its ``Popen``, or :func:`stop_groups`, reaps it."""
    me = os.getpid()
    for process in psutil.process_iter(["status", "ppid"]):
        with contextlib.suppress(OSError):  # gone since the listing
            ours_to_reap = process.info["status"] == psutil.STATUS_ZOMBIE and process.info["ppid"] == me
            if not ours_to_reap and os.getpgid(process.pid) == pgid:
                return True
    return False


def signal_group(pgid: int, signum: int) -> None:
    """``signum`` to every process of group ``pgid``; nothing when the group is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def terminate(send: Callable[[int], None], alive: Callable[[], bool], grace: float) -> None:
    """``send(SIGTERM)``, then ``send(SIGKILL)`` if ``alive()`` still after ``grace`` seconds."""
    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive():
        send(signal.SIGKILL)


def stop_groups(leaders: Iterable[int], grace: float = 15.0) -> None:
    """Stop the process groups led by ``leaders`` (SIGTERM, SIGKILL to what is left after ``grace`` seconds) and
    reap the leaders that are children of this process."""
    leaders = list(leaders)

    def send(signum: int) -> None:
        for pgid in leaders:
            signal_group(pgid, signum)

    terminate(send, lambda: any(group_alive(pgid) for pgid in leaders), grace)
    for pgid in leaders:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pgid, os.WNOHANG)


def descendants(pid: int) -> list[psutil.Process]:
    """Every living descendant of process ``pid`` (none when it is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_all(processes: list[psutil.Process], timeout: float = 10.0) -> None:
    """SIGKILL to each of ``processes``; wait up to ``timeout`` seconds for them to go."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=timeout)
