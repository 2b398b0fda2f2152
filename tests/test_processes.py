"""The handle for local background processes (``leukolab.processes``), on real child processes: ready once it
answers, errors that end with the log's tail, a stop that ends its whole group and what escaped into sessions of
its own, a kill of the whole family, and a child that follows its launcher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import psutil
import pytest

from leukolab.processes.background import Background, free_port, wait_until_ready
from leukolab.processes.groups import group_alive, stop_groups

SPAWNER = textwrap.dedent("""
    import subprocess, sys, time
    same_group = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    own_session = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    print(same_group.pid, own_session.pid, flush=True)
    time.sleep(120)
""")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def printed_pids(handle: Background, timeout: float = 20) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while not handle.log_tail().strip():
        assert time.monotonic() < deadline, "the spawner printed no pids"
        time.sleep(0.1)
    return [psutil.Process(int(pid)) for pid in handle.log_tail().split()]


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_free_port_can_be_bound():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", free_port()))


def test_ready_once_it_answers_and_stopped_with_its_group(tmp_path):
    port = free_port()
    server = Background.start([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                              tmp_path / "http.log", "http.server", url=f"http://127.0.0.1:{port}", cwd=tmp_path,
                              own_group=True)
    wait_until_ready(lambda: answers(server.url), [server], timeout=30)
    assert server.running() and group_alive(server.process.pid)
    server.stop()
    assert not server.running() and server.process.returncode is not None


def test_an_early_exit_raises_with_the_code_and_the_log_tail(tmp_path):
    process = Background.start(python("print('no config here'); raise SystemExit(3)"), tmp_path / "early.log", "early")
    with pytest.raises(RuntimeError, match=r"(?s)early exited with code 3 before it was ready; .*no config here"):
        wait_until_ready(lambda: False, [process], timeout=30)


def test_a_reason_it_never_will_be_ready_stops_it(tmp_path):
    process = Background.start(python("import time; time.sleep(60)"), tmp_path / "sleep.log", "sleeper")
    with pytest.raises(RuntimeError, match="sleeper could not load the model"):
        wait_until_ready(lambda: "could not load the model", [process], timeout=30)
    assert process.process.poll() is not None


def test_a_timeout_stops_it_and_names_the_seconds(tmp_path):
    process = Background.start(python("import time; time.sleep(60)"), tmp_path / "slow.log", "slow", own_group=True)
    with pytest.raises(TimeoutError, match="slow was not ready after 1 s"):
        wait_until_ready(lambda: False, [process], timeout=1)
    assert not process.running()


def test_stop_ends_its_group_then_what_left_it_for_a_session_of_its_own(tmp_path):
    spawner = Background.start(python(SPAWNER), tmp_path / "spawner.log", "spawner", own_group=True, grace=2)
    same_group, own_session = printed_pids(spawner)
    spawner.stop()
    assert gone(same_group) and gone(own_session) and not group_alive(spawner.process.pid)


def test_kill_ends_the_whole_family_at_once(tmp_path):
    spawner = Background.start(python(SPAWNER), tmp_path / "spawner.log", "spawner")
    family = printed_pids(spawner)
    spawner.kill()
    assert spawner.process.returncode == -9
    assert all(gone(member) for member in family)


def test_groups_known_only_by_pid_are_stopped_and_reaped(tmp_path):
    leaders = [subprocess.Popen(python("import time; time.sleep(60)"), start_new_session=True) for _ in range(2)]
    stop_groups([p.pid for p in leaders], grace=5)
    assert not any(group_alive(p.pid) for p in leaders)
    with pytest.raises(ChildProcessError):  # reaped: no zombie left behind
        os.waitpid(leaders[0].pid, 0)


def test_a_child_that_follows_its_parent_ends_with_it(tmp_path):
    """The launcher (a child of this test) starts a follower and is killed; the follower's watchdog sees it go."""
    follower = ("from leukolab.processes.lifeline import follow_parent; import os, time; "
                "follow_parent(lambda: os._exit(0), interval=0.1); time.sleep(60)")
    launcher = python(textwrap.dedent(f"""
        import sys, time
        from leukolab.processes.background import Background
        child = Background.start([sys.executable, "-c", {follower!r}], {str(tmp_path / 'follower.log')!r}, "follower",
                                 follow_parent=True)
        print(child.process.pid, flush=True)
        time.sleep(60)
    """))
    parent = subprocess.Popen(launcher, stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        time.sleep(0.5)
        assert not gone(child), "the follower stopped while its launcher lives"
        parent.kill()
        parent.wait()
        psutil.wait_procs([child], timeout=15)
        assert gone(child), "the follower outlived its launcher"
    finally:
        parent.kill()
