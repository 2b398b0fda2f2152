"""Run one stage notebook under papermill in a child process that can be timed out and killed.

The child (``python -m leukolab.pipeline.execute REQUEST RESULT``) runs papermill
and writes what happened to RESULT: done, or the failing cell, its source line
and the exception, or a dead kernel. The parent waits up to the stage's timeout,
then kills the child and everything it started (the kernel, Spark, a server).
The child follows its parent (:mod:`leukolab.processes.lifeline`): when the runner dies, or
SIGTERM reaches the child itself, it kills its kernel and what that started, and exits.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from leukolab.disk import write_whole
from leukolab.processes.background import Background
from leukolab.processes.groups import descendants, kill_all
from leukolab.processes.lifeline import follow_parent

KERNEL_NAME = "leukolab"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Outcome:
    """How a notebook execution ended: ``done``, ``failed``, ``timed_out`` or ``killed``, with a message."""

    status: str
    error: str | None = None


class Executor:
    """Starts notebook executions and can kill every one still running (on Ctrl-C)."""

    def __init__(self):
        self._running: set[Background] = set()
        self._lock = threading.Lock()

    def run(self, notebook: Path, output: Path, parameters: dict, env: dict, timeout: float | None) -> Outcome:
        """Execute ``notebook`` into ``output`` (its log beside it, ``.log``), killing it after ``timeout`` seconds."""
        try:
            kernel = kernel_name()
        except RuntimeError as error:
            return Outcome("failed", f"could not run ({error})")
        request = output.with_suffix(".request.json")
        result = output.with_suffix(".result.json")
        result.unlink(missing_ok=True)
        request.write_text(json.dumps({"notebook": str(notebook), "output": str(output), "parameters": parameters,
                                       "kernel": kernel}, default=str))
        execution = Background.start([sys.executable, "-m", "leukolab.pipeline.execute", str(request), str(result)],
                                     output.with_suffix(".log"), f"the execution of {notebook.name}", env=env,
                                     cwd=notebook.parent, follow_parent=True, stop_at_exit=False, append=False)
        with self._lock:
            self._running.add(execution)
        try:
            execution.process.wait(timeout)
        except subprocess.TimeoutExpired:
            execution.kill()
            return Outcome("timed_out", f"timed out after {timeout:g} s")
        finally:
            with self._lock:
                self._running.discard(execution)
        request.unlink(missing_ok=True)
        if result.is_file():
            outcome = json.loads(result.read_text())
            result.unlink()
            return Outcome(outcome["status"], outcome.get("error"))
        return Outcome("killed", f"failed: its process ended with exit code {execution.process.returncode} before the "
                                 "notebook finished")

    def kill_all(self) -> None:
        with self._lock:
            running = list(self._running)
        for execution in running:
            execution.kill()  # the kernel runs in a session of its own: its process group is not enough


def _stop_notebook(*_) -> None:
    """Kill the kernel and everything it started, then exit (the runner is gone, or SIGTERM came)."""
    kill_all(descendants(os.getpid()))
    os._exit(1)


def kernel_name() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL_NAME in KernelSpecManager().find_kernel_specs():
        return KERNEL_NAME
    raise RuntimeError(f"Jupyter kernel {KERNEL_NAME!r} is not registered: run `make env` (or "
                       f"`python -m ipykernel install --sys-prefix --name {KERNEL_NAME}`)")


def describe_cell_error(error) -> str:
    """``cell N, line L: <source line> (Exception: message)`` from papermill's execution error."""
    where = f"cell {error.exec_count}"
    found = re.search(r"Cell In\[\d+\], line (\d+)", ANSI.sub("", "\n".join(error.traceback or [])))
    lines = (error.source or "").splitlines()
    if found and 0 < int(found.group(1)) <= len(lines):
        where += f", line {found.group(1)}: {lines[int(found.group(1)) - 1].strip()}"
    return f"{where} ({error.ename}: {error.evalue})"


def _execute(request_file: str, result_file: str) -> int:
    follow_parent(_stop_notebook)
    signal.signal(signal.SIGTERM, _stop_notebook)
    import papermill
    from nbclient.exceptions import DeadKernelError

    request = json.loads(Path(request_file).read_text())
    output = Path(request["output"])
    try:
        papermill.execute_notebook(request["notebook"], str(output), parameters=request["parameters"],
                                   kernel_name=request["kernel"], cwd=str(Path(request["notebook"]).parent),
                                   progress_bar=False, request_save_on_cell_execute=True)
        result = {"status": "done"}
    except papermill.PapermillExecutionError as error:
        result = {"status": "failed", "error": f"failed in {describe_cell_error(error)}"}
    except DeadKernelError as error:
        result = {"status": "killed", "error": f"failed: the kernel died ({error})"}
    except Exception as error:  # a notebook that cannot start: missing file, bad parameters, no kernel
        result = {"status": "failed", "error": f"could not run ({type(error).__name__}: {error})"}
    write_whole(result_file, json.dumps(result))  # whole or absent: on a full disk, absent
    return 0 if result["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(_execute(*sys.argv[1:3]))
