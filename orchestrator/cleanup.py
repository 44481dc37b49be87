"""Stop the Ray processes a killed driver left behind, by pid, from the sweep's own record.

An embedded local Ray (``ray.init`` without an address) starts a GCS server, a raylet, log and
dashboard agents and workers (~210 MB). When its driver is SIGKILLed nobody shuts them down and
they linger for minutes. The driver writes their pids and start times to ``bitsweep_pids.json``
in the sweep's folder; the next ``run`` or ``resume`` of that sweep, once it holds the sweep's
lock (so the recorded driver is gone), stops the recorded processes that still exist with the
same start time (a reused pid is left alone), together with their children. Never by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PIDS_FILE = "bitsweep_pids.json"


def pids_path(folder: str) -> Path:
    """Where a sweep folder's process record lives (machine-local for remote storage)."""
    if "://" not in folder:
        return Path(folder) / PIDS_FILE
    from orchestrator.locking import bitsweep_home

    digest = hashlib.sha256(folder.rstrip("/").encode()).hexdigest()[:24]
    return bitsweep_home() / "pids" / f"{digest}.json"


def _describe(pid: int, kind: str) -> dict[str, Any] | None:
    import psutil

    try:
        return {"pid": pid, "create_time": psutil.Process(pid).create_time(), "kind": kind}
    except psutil.Error:
        return None


def record_ray_processes(folder: str) -> int:
    """Write the pids of the local Ray this driver started (call right after ``ray.init``).

    Returns how many were recorded (0 when Ray runs elsewhere: nothing here to clean up).
    """
    try:
        from ray._private import worker

        node = worker._global_node
    except (ImportError, AttributeError):
        return 0
    if node is None:
        return 0
    processes = [_describe(os.getpid(), "driver")]
    for kind, infos in getattr(node, "all_processes", {}).items():
        for info in infos:
            pid = getattr(getattr(info, "process", None), "pid", None)
            if pid:
                processes.append(_describe(int(pid), str(kind)))
    record = {"host": socket.gethostname(), "processes": [p for p in processes if p]}
    path = pids_path(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    except OSError as err:  # a full disk must not stop the sweep for want of this record
        log.warning("could not record Ray's pids in %s: %s", path, err)
        return 0
    return len(record["processes"]) - 1


def forget_ray_processes(folder: str) -> None:
    """Drop the record after Ray shut down normally."""
    with contextlib.suppress(OSError):
        pids_path(folder).unlink(missing_ok=True)


def stop_orphans(folder: str, timeout: float = 10.0) -> list[int]:
    """Stop what a killed driver of this sweep left running; returns the pids stopped.

    Call only while holding the sweep's lock (the recorded driver is then dead). Processes are
    matched by pid *and* start time; other hosts' records are left alone.
    """
    import psutil

    path = pids_path(folder)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if record.get("host") != socket.gethostname():
        return []
    targets: list[psutil.Process] = []
    for entry in record.get("processes", []):
        if entry.get("kind") == "driver" or entry.get("pid") == os.getpid():
            continue
        try:
            proc = psutil.Process(int(entry["pid"]))
            if abs(proc.create_time() - float(entry["create_time"])) > 0.5:
                continue  # the pid was reused by an unrelated process
            targets += [proc, *proc.children(recursive=True)]
        except (psutil.Error, KeyError, TypeError, ValueError):
            continue
    for proc in targets:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(targets, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=timeout)
    forget_ray_processes(folder)
    if targets:
        log.warning("stopped %d Ray process(es) left by a killed driver", len(targets))
    return [p.pid for p in targets]


def start_local_ray(attempts: int = 3, **options: Any) -> None:
    """``ray.init(**options)`` for an embedded Ray, retried when its node starts too slowly.

    Ray waits a fixed 30 s for its raylet to register; on a loaded machine that fails now and
    then ("The current node timed out during startup"). The half-started node is shut down (by
    Ray's own API, which stops the processes it started) before the next attempt.
    """
    import psutil
    import ray

    me = psutil.Process()
    for attempt in range(1, attempts + 1):
        before = {p.pid for p in me.children(recursive=True)}
        try:
            ray.init(**options)
            return
        except Exception as err:
            if "timed out during startup" not in str(err) or attempt == attempts:
                raise
            log.warning("Ray's node was slow to start (attempt %d); starting it again", attempt)
            ray.shutdown()
            # the node never registered, so Ray does not know what it started: stop those by pid
            started = [p for p in me.children(recursive=True) if p.pid not in before]
            for proc in started:
                with contextlib.suppress(psutil.Error):
                    proc.terminate()
            _, alive = psutil.wait_procs(started, timeout=10)
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
