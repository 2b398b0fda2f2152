"""Nothing outlives the run that started it: a pipeline run stopped by SIGTERM during ``serve`` ends as ``killed``
with no process of it left, and a background API server exits when the process that launched it is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.long]

LAUNCHER = textwrap.dedent("""
    import sys, threading, time
    from leukolab.serving.launch import start_server

    servers = {}
    thread = threading.Thread(target=lambda: servers.update(thread=start_server(timeout=180)))
    thread.start()
    servers["main"] = start_server(timeout=180)
    thread.join()
    print(servers["main"].process.pid, servers["thread"].process.pid, flush=True)
    time.sleep(600)
""")


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_leftovers(processes) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.timeout(300)
def test_a_background_server_exits_when_its_launcher_is_killed(model_env):
    """One server launched from the launcher's main thread (followed by PR_SET_PDEATHSIG and the watchdog), one from a
    thread that has ended since (the watchdog alone: that thread's end must not stop it)."""
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    servers = []
    try:
        line = launcher.stdout.readline()
        assert line, f"the launcher printed no server pids: {launcher.stderr.read()[-3000:] if launcher.poll() is not None else ''}"
        servers = [psutil.Process(int(pid)) for pid in line.split()]
        time.sleep(1.5)  # the watchdog looks every 0.5 s
        assert all(alive(server) for server in servers), "a server stopped while its launcher lives"
        launcher.kill()
        launcher.wait(10)
        _, left = psutil.wait_procs(servers, timeout=20)
        assert not [server for server in left if alive(server)], "a server outlived its launcher by 20 s"
    finally:
        launcher.kill()
        launcher.wait(10)
        kill_leftovers(servers)


@pytest.mark.timeout(600)
def test_sigterm_during_serve_stops_the_run_with_everything_it_started(smoke_run):
    """A run with only serve to do (its parameter changed, every other stage cached from smoke-1) is sent SIGTERM once
    its API server process is up."""
    from mlflow.tracking import MlflowClient

    workspace, _ = smoke_run
    env = {**os.environ, "LEUKOLAB_WORKSPACE": str(workspace), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    runner = subprocess.Popen([sys.executable, "-m", "leukolab.cli", "run", "--profile", "smoke", "--run-id", "stopped",
                               "--param", "serve.images_to_send=5"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    family: dict[int, psutil.Process] = {}
    try:
        deadline, server = time.monotonic() + 300, None
        while server is None and time.monotonic() < deadline and runner.poll() is None:
            try:
                family.update({child.pid: child for child in psutil.Process(runner.pid).children(recursive=True)})
                server = next((p for p in family.values() if alive(p) and "leukolab.serving" in p.cmdline()), None)
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.1)
        assert server is not None, f"no API server came up: {runner.poll()}, {runner.stderr.read()[-3000:] if runner.poll() is not None else ''}"
        runner.send_signal(signal.SIGTERM)
        _, stderr = runner.communicate(timeout=60)
        assert runner.returncode == 143 and "stopped by SIGTERM" in stderr, stderr[-3000:]
        _, left = psutil.wait_procs(list(family.values()), timeout=15)
        assert not [p for p in left if alive(p)], f"left running: {[p.cmdline() for p in left if alive(p)]}"
        lineage = json.loads((workspace / "runs" / "stopped" / "lineage.json").read_text())
        statuses = {name: task["status"] for name, task in lineage["tasks"].items()}
        assert lineage["status"] == "killed" and statuses.pop("serve") == "killed"
        assert set(statuses.values()) == {"cached"} and "SIGTERM" in lineage["tasks"]["serve"]["error"]
        parent = MlflowClient(lineage["tracking_uri"]).get_run(lineage["mlflow_parent_run_id"])
        assert parent.info.status == "KILLED"
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate(timeout=30)
        kill_leftovers(family.values())
