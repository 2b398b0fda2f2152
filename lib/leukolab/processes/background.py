"""One handle for a process started in the background: its output goes to a log file, :func:`wait_until_ready`
waits until it answers, ``stop()`` ends it (its whole process group when it leads one, and whatever it started in
sessions of their own), and every error on the way ends with the tail of its log."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from leukolab.processes.groups import descendants, group_alive, kill_all, signal_group, terminate
from leukolab.processes.lifeline import child_environment

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that nothing listens on at ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def log_tail(path: str | os.PathLike, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ("" when there is none yet)."""
    path = Path(path)
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass(eq=False)
class Background:
    """A process started with :meth:`start`; ``stop()`` it, or use it as a context manager."""

    process: subprocess.Popen
    name: str
    log_path: Path
    url: str | None = None
    own_group: bool = False
    grace: float = 10.0

    @classmethod
    def start(cls, command: list[str], log_path: str | os.PathLike, name: str, *, url: str | None = None,
              env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None, own_group: bool = False,
              follow_parent: bool = False, stop_at_exit: bool = True, append: bool = True,
              grace: float = 10.0) -> Background:
        """Start ``command`` (called ``name`` in errors; answering at ``url``, if it serves) with its output in
        ``log_path`` (appended to, unless not ``append``) and no input.

        ``own_group``: in a session and process group of its own, which ``stop`` signals whole (Ctrl-C at a
        terminal does not reach it). ``follow_parent``: it ends with this process, however this one ends (the
        command calls :func:`leukolab.processes.lifeline.follow_parent`). ``stop_at_exit``: stopped when this
        interpreter exits. ``grace``: how long ``stop`` waits after SIGTERM before SIGKILL.
        """
        env = dict(os.environ if env is None else env)
        if follow_parent:
            env = child_environment(env)
        with open(log_path, "ab" if append else "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, cwd=cwd, start_new_session=own_group)
        handle = cls(process, name, Path(log_path), url, own_group, grace)
        if stop_at_exit:
            atexit.register(handle.stop)
        return handle

    def running(self) -> bool:
        """Whether it runs; for a group leader, whether any process of its group does."""
        exited = self.process.poll() is not None  # reaps it once it has exited
        return group_alive(self.process.pid) if self.own_group else not exited

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM (to its group when it leads one), SIGKILL to what is left of it after ``timeout`` seconds (default:
        its ``grace``), and to what it started in sessions of their own that outlives it by another ``timeout``."""
        atexit.unregister(self.stop)
        timeout = self.grace if timeout is None else timeout
        started = descendants(self.process.pid)
        terminate(self._send, self.running, timeout)
        self.process.wait()
        kill_all(psutil.wait_procs(started, timeout=timeout)[1], timeout)

    def kill(self) -> None:
        """SIGKILL to it and every descendant at once (those in sessions of their own too)."""
        atexit.unregister(self.stop)
        family = descendants(self.process.pid)  # before it dies and they are handed to another parent
        self._send(signal.SIGKILL)
        kill_all(family)
        self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its log."""
        return log_tail(self.log_path, lines)

    def _send(self, signum: int) -> None:
        if self.own_group:
            signal_group(self.process.pid, signum)
        elif self.process.poll() is None:
            self.process.send_signal(signum)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def wait_until_ready(ready: Callable[[], bool | str | None], processes: Sequence[Background], timeout: float,
                     interval: float = 0.2) -> None:
    """Return once ``ready()`` answers True. Stop every one of ``processes`` and raise when one exits first or
    ``ready()`` answers a reason it never will be (``RuntimeError``), or after ``timeout`` seconds (``TimeoutError``);
    the message names the process (the first, unless another exited) and ends with its log's tail."""
    deadline = time.monotonic() + timeout
    while (answer := ready()) is not True:
        exited = [p for p in processes if p.process.poll() is not None]
        culprit = exited[0] if exited else processes[0]
        if exited:
            error, problem = RuntimeError, f"exited with code {culprit.process.returncode} before it was ready"
        elif isinstance(answer, str):
            error, problem = RuntimeError, answer
        elif time.monotonic() > deadline:
            error, problem = TimeoutError, f"was not ready after {timeout:.0f} s"
        else:
            time.sleep(interval)
            continue
        for process in processes:
            process.stop()
        raise error(f"{culprit.name} {problem}; the end of its log {culprit.log_path}:\n{culprit.log_tail()}")
