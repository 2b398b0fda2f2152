"""`make test` for a user who is not root: a user made with useradd runs `make test` on one small test file in a copy
of this clone. The environment is this one (made readable to that user in a private mount namespace when it lives in
root's home); Debian's chromedriver is hidden from the user's view, so the tools check has something only root could
install. Make must say so and go on (the docs build and pytest run), use no sudo, and leave a working `.venv`."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import ROOT
from test_packaging import UV

ROOT_HOME = Path(pwd.getpwuid(0).pw_dir)

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("unshare"),
                                reason="needs root (to create an unprivileged user with useradd) and unshare")


@pytest.fixture
def user():
    """A new unprivileged user with a home folder of its own under /tmp; both removed afterwards."""
    name = f"lkt{uuid.uuid4().hex[:8]}"
    home = Path(tempfile.mkdtemp(prefix="leukolab-user-", dir="/tmp"))
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/bash", name], check=True)
    try:
        shutil.chown(home, name, name)
        home.chmod(0o755)
        yield pwd.getpwnam(name), home
    finally:
        subprocess.run(["userdel", name], check=False)
        shutil.rmtree(home, ignore_errors=True)


def visible_script(needed: list[Path], hidden_tool: Path, stage: Path) -> str:
    """Shell lines, for a private mount namespace: the ``needed`` folders inside root's home become reachable
    through a fresh, world-readable root home, and ``hidden_tool`` reads as missing (not executable)."""
    lines = ["set -e", "mount --make-rprivate /"]
    inside = [p for p in needed if ROOT_HOME in p.parents]
    for index, path in enumerate(inside):
        lines += [f"mkdir -p {stage}/{index}", f"mount --bind {shlex.quote(str(path))} {stage}/{index}"]
    if inside:
        lines.append(f"mount -t tmpfs -o mode=755 tmpfs {ROOT_HOME}")
    for index, path in enumerate(inside):
        lines += [f"mkdir -p {shlex.quote(str(path))}", f"mount --bind {stage}/{index} {shlex.quote(str(path))}"]
    if hidden_tool.exists():
        lines.append(f"mount --bind /dev/null {hidden_tool}")
    return "\n".join(lines)


@pytest.mark.timeout(600)
def test_make_test_as_a_user_who_is_not_root(user, tmp_path):
    account, home = user
    clone = home / "clone"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file() and not (ROOT / name).is_symlink():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    tripwire = home / "tripwire"
    tripwire.mkdir()
    (tripwire / "sudo").write_text(f"#!/bin/sh\ntouch {home}/sudo-was-called\nexit 1\n")
    (tripwire / "sudo").chmod(0o755)
    subprocess.run(["chown", "-R", f"{account.pw_name}:{account.pw_name}", str(home)], check=True)

    venv, tools = Path(sys.prefix), Path(os.environ.get("LEUKOLAB_TOOLS", ROOT_HOME / ".cache" / "leukolab" / "tools"))
    needed = [venv, Path(sys.base_prefix).resolve(), tools]
    stage = tmp_path / "stage"
    stage.mkdir()
    make = (f"make --no-print-directory -C {clone} test VENV={venv} UV={UV} TESTS=tests/test_curves.py NOTEBOOKS=")
    env = {"HOME": str(home), "PATH": f"{tripwire}:{os.environ['PATH']}", "LEUKOLAB_TOOLS": str(tools),
           "HF_HUB_OFFLINE": "1", "LANG": "C.UTF-8"}
    as_user = (f"exec setpriv --reuid={account.pw_uid} --regid={account.pw_gid} --clear-groups "
               f"env -i {' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())} {make}")
    script = visible_script(needed, Path("/usr/bin/chromedriver"), stage) + "\n" + as_user
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=540)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "apt-get needs root to install Debian's" in output and "chromium-driver" in output, output[-4000:]
    assert "going on without them: their tests skip" in output
    assert " passed" in result.stdout and (clone / "runs" / "site" / "cli.html").is_file(), output[-3000:]
    assert not (home / "sudo-was-called").exists(), "make test used sudo"
    assert (clone / ".venv").is_symlink() and (clone / ".venv").readlink() == venv
