"""An exclusive lock on a sweep's folder, so two ``run``/``resume`` of one sweep never share state.

Two drivers on one sweep would share its Optuna study (each configuration trained twice), mix
trial folders and overwrite ``tuner.pkl``. The lock is an ``flock`` on ``bitsweep.lock`` in the
sweep's folder; the file also holds the holder's pid, host and start time, which the refusal
names. The kernel drops an ``flock`` when its process dies (SIGKILL included), so the lock of a
killed driver is simply taken over: a lock is never stale on a local disk. On storage that is
not a local path (``s3://``, ``gs://``) the lock file lives under ``~/.bitsweep/locks`` instead
and so only guards against a second driver on the same machine (README: "when things go wrong").
The descriptor is not inherited by child processes (PEP 446), so Ray processes a killed driver
leaves behind do not keep its lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError

LOCK_FILE = "bitsweep.lock"
HOME_ENV = "BITSWEEP_HOME"  # where bitsweep keeps machine-local state (default ~/.bitsweep)


class SweepLockedError(UserError, RuntimeError):
    """Another live process holds the sweep's lock; the message names its pid and host."""


def bitsweep_home() -> Path:
    """``$BITSWEEP_HOME`` or ``~/.bitsweep``: machine-local state kept outside any storage."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".bitsweep").expanduser()


def lock_path(folder: str) -> Path:
    """The lock file of a sweep folder (a local path, or a URI locked on this machine only)."""
    if "://" not in folder:
        return Path(folder) / LOCK_FILE
    digest = hashlib.sha256(folder.rstrip("/").encode()).hexdigest()[:24]
    return bitsweep_home() / "locks" / f"{digest}.lock"


@dataclass
class SweepLock:
    """A held lock; :meth:`release` (or process exit) frees it."""

    path: Path
    fd: int | None

    def release(self) -> None:
        """Drop the lock and clear the holder record (idempotent)."""
        if self.fd is None:
            return
        # a full or read-only disk: the flock still goes with the descriptor
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> SweepLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def holder(path: Path) -> dict[str, Any]:
    """The pid/host record in a lock file ({} when unreadable or empty)."""
    try:
        return dict(json.loads(path.read_text() or "{}"))
    except (OSError, ValueError, TypeError):
        return {}


def acquire(folder: str, name: str) -> SweepLock:
    """Lock sweep ``name``'s ``folder`` for this process, or raise :class:`SweepLockedError`.

    Never waits: a second driver is refused at once, naming the holder's pid and host.
    """
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        who = holder(path)
        pid, host = who.get("pid", "?"), who.get("host", "?")
        raise SweepLockedError(
            f"sweep {name!r} is in use by pid {pid} on host {host} (lock {path}): wait for that "
            "run to end or stop it, then try again; two drivers on one sweep would share its study"
        ) from None
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
    except OSError:
        pass  # a full disk: the flock itself holds; only the holder's name is missing
    return SweepLock(path, fd)
