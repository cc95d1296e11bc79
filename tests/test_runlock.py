"""utils/runlock.py: one run per folder."""
import os
import socket
import subprocess
import sys

import pytest

from utils import runlock
from utils.errors import UserError


def write_lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / runlock.LOCK_NAME).write_text(f"{pid}\n{host or socket.gethostname()}\n2026-12-05 08:00:00\n")


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_live_run_holds_its_folder(tmp_path):
    write_lock(tmp_path / "run", os.getppid())  # a live process that is not this one
    with pytest.raises(UserError, match=f"in use by another run \\(pid {os.getppid()} on ") as e:
        runlock.acquire(tmp_path / "run")
    assert "\n" not in str(e.value)


def test_a_lock_on_another_host_is_never_taken_over(tmp_path):
    write_lock(tmp_path / "run", dead_pid(), host="elsewhere")
    with pytest.raises(UserError, match="pid .* on elsewhere"):
        runlock.acquire(tmp_path / "run")


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path / "run", pid)
    notes = []
    path = runlock.acquire(tmp_path / "run", log=notes.append)
    assert path.read_text().split("\n")[0] == str(os.getpid())
    assert notes and f"pid {pid}" in notes[0] and "no longer running" in notes[0]


def test_the_same_process_may_lock_again_and_release_frees_the_folder(tmp_path):
    a = runlock.acquire(tmp_path / "run")
    assert runlock.acquire(tmp_path / "run") == a
    runlock.release(a)
    assert not a.exists()
    write_lock(tmp_path / "other", os.getppid())
    runlock.release(tmp_path / "other" / runlock.LOCK_NAME)  # not ours: left alone
    assert (tmp_path / "other" / runlock.LOCK_NAME).exists()


def test_prune_py_refuses_a_live_runs_folder_before_writing(tmp_path):
    import argparse

    from utils.pruning import PruneRun

    write_lock(tmp_path / "exp", os.getppid())
    args = argparse.Namespace(project=str(tmp_path), name="exp", exist_ok=True)
    with pytest.raises(UserError, match="in use by another run"):
        PruneRun.create(args)
    assert not (tmp_path / "exp" / "args.yaml").exists()
    (tmp_path / "exp" / runlock.LOCK_NAME).unlink()
    (tmp_path / "exp" / ".rounds.csv.x1.tmp").write_text("half")
    run = PruneRun.create(args)  # free now: taken, and the killed run's temporary file removed
    assert (run.path / "args.yaml").is_file() and not (run.path / ".rounds.csv.x1.tmp").exists()
    runlock.release(run.path / runlock.LOCK_NAME)
