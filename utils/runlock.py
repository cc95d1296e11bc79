"""One run per folder: a lock file naming the process (pid, host) that writes the folder.

A second run on a folder whose lock names a live process stops with a one-line error; a lock whose process is gone
(a killed run) is taken over with a note. The same process may take its own lock again (prune.py's rounds, resumes
inside one test process).
"""
import atexit
import os
import socket
import time
from pathlib import Path

from utils.errors import UserError

LOCK_NAME = ".run.lock"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _read(path):
    """``(pid, host, started)`` of a lock file; ``None`` for an unreadable or half-written one."""
    try:
        pid, host, started = path.read_text().split("\n")[:3]
        return int(pid), host, started
    except (OSError, ValueError):
        return None


def acquire(folder, log=print):
    """Lock ``folder`` for this process; returns the lock's path. Raises ``UserError`` if a live run holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    me = (os.getpid(), socket.gethostname())
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:  # another process is writing it this instant, or a crash left it empty
                time.sleep(0.2)
                holder = _read(path)
            if holder is not None and holder[:2] == me:
                return path
            if holder is not None and (holder[1] != me[1] or _alive(holder[0])):
                pid, host, started = holder
                raise UserError(f"{folder}: in use by another run (pid {pid} on {host}, started {started}); wait for "
                                f"it or choose another --name (remove {path.name} only if that run is gone)")
            log(f"note: {folder}: taking over the lock of a run that is no longer running"
                + (f" (pid {holder[0]})" if holder else ""))
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{me[0]}\n{me[1]}\n{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        atexit.register(release, path)
        return path
    raise UserError(f"{folder}: could not take the run lock {path.name}")


def release(path):
    """Remove the lock at ``path`` if this process holds it."""
    path = Path(path)
    holder = _read(path)
    if holder is not None and holder[:2] == (os.getpid(), socket.gethostname()):
        path.unlink(missing_ok=True)
