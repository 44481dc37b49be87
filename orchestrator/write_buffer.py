"""An on-disk buffer of the MLflow writes a sweep could not make, replayed when MLflow is back.

:class:`BufferedClient` wraps an ``MlflowClient``. A write (``create_run``, ``log_batch``,
``set_terminated``, artifacts, ...) that fails because the store cannot be reached is appended to
``mlflow_pending/journal.jsonl`` in the sweep's folder instead of being lost; while anything is
pending, later writes queue behind it (MLflow sees them in order). Every write retries the queue
once its backoff (2 s doubling to 60 s) has passed, and the driver flushes it before the sweep's
summary. A run created while the store was away gets a placeholder id (``pending-...``) that the
replay maps to the real one. What is still pending when the driver exits stays on disk; ``bitsweep
sync NAME`` replays it. Replays are idempotent for metrics (same key, step, timestamp and value),
and each replayed entry is recorded in ``done.jsonl`` so a crash mid-replay repeats at most one.

A write MLflow *refuses* (a bad value, a missing run) is not an outage: it is raised at once (and
dropped, with a warning, if met during a replay) so the queue never jams.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

log = logging.getLogger(__name__)

BUFFER_DIR = "mlflow_pending"
JOURNAL, DONE = "journal.jsonl", "done.jsonl"
PLACEHOLDER = "pending-"
WRITES = frozenset(
    {
        "create_run",
        "log_batch",
        "log_metric",
        "log_param",
        "set_tag",
        "delete_tag",
        "set_terminated",
        "update_run",
        "log_text",
        "log_dict",
        "log_artifacts",
        "log_artifact",
    }
)
# MLflow error codes that mean "the store answered and refused": retrying cannot help.
REFUSALS = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_ALREADY_EXISTS",
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_STATE",
        "BAD_REQUEST",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
    }
)
_ACTIVE: list[BufferedClient] = []  # the clients of this process (for the progress line)


def pending_writes() -> int:
    """How many MLflow writes this process's sweeps have buffered and not yet replayed."""
    return sum(c.pending for c in _ACTIVE)


def is_refusal(err: BaseException) -> bool:
    """Whether ``err`` is MLflow refusing a write (not the store being unreachable)."""
    code = getattr(err, "error_code", None)
    return isinstance(code, str) and code in REFUSALS


def _encode(value: Any) -> Any:
    from mlflow.entities import Metric, Param, RunTag

    if isinstance(value, Metric):
        return {"__e": "Metric", "k": value.key, "v": value.value, "t": value.timestamp,
                "s": value.step}  # fmt: skip
    if isinstance(value, Param):
        return {"__e": "Param", "k": value.key, "v": value.value}
    if isinstance(value, RunTag):
        return {"__e": "RunTag", "k": value.key, "v": value.value}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    from mlflow.entities import Metric, Param, RunTag

    if isinstance(value, dict) and "__e" in value:
        kind = value["__e"]
        if kind == "Metric":
            return Metric(value["k"], value["v"], value["t"], value["s"])
        return (Param if kind == "Param" else RunTag)(value["k"], value["v"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    return value


class BufferedClient:
    """An ``MlflowClient`` whose failed writes go to an on-disk journal in ``folder``."""

    def __init__(self, client: Any, folder: str | Path) -> None:
        self._client = client
        self.folder = Path(folder) / BUFFER_DIR
        self._lock = threading.RLock()
        self._ids: dict[str, str] = {}  # placeholder run id -> real run id
        self._done: set[int] = set()
        self._entries: list[dict[str, Any]] = []
        self._backoff = 2.0
        self._next_try = 0.0
        self.last_error: str | None = None
        self._load()
        _ACTIVE.append(self)

    # ---- state on disk ------------------------------------------------------------------------

    def _load(self) -> None:
        journal, done = self.folder / JOURNAL, self.folder / DONE
        if done.is_file():
            for line in done.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn last line after a crash
                self._done.add(int(record["seq"]))
                if record.get("run_id"):
                    self._ids[record["placeholder"]] = record["run_id"]
        if journal.is_file():
            for line in journal.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if int(entry["seq"]) not in self._done:
                    self._entries.append(entry)

    @property
    def pending(self) -> int:
        """How many writes wait in the journal."""
        return len(self._entries)

    def _append(self, method: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        seq = max([e["seq"] for e in self._entries] + list(self._done) + [-1]) + 1
        entry: dict[str, Any] = {"seq": seq, "method": method, "args": _encode(args),
                                 "kwargs": _encode(kwargs), "time": time.time()}  # fmt: skip
        if method == "create_run":
            entry["placeholder"] = f"{PLACEHOLDER}{uuid.uuid4().hex}"
        if method in ("log_artifacts", "log_artifact"):  # the source is a temporary folder
            copy = self.folder / "artifacts" / str(seq)
            source = Path(args[1])
            copy.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, copy)
            else:
                copy.mkdir(parents=True)
                shutil.copy2(source, copy / source.name)
                copy = copy / source.name
            entry["args"][1] = str(copy)
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / JOURNAL, "a") as f:
            f.write(json.dumps(entry) + "\n")
        self._entries.append(entry)
        return entry

    def _mark_done(self, entry: dict[str, Any], run_id: str | None = None) -> None:
        record: dict[str, Any] = {"seq": entry["seq"]}
        if run_id and entry.get("placeholder"):
            record.update(placeholder=entry["placeholder"], run_id=run_id)
            self._ids[entry["placeholder"]] = run_id
        with open(self.folder / DONE, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._done.add(entry["seq"])

    # ---- calls --------------------------------------------------------------------------------

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, str) and value.startswith(PLACEHOLDER):
            return self._ids.get(value, value)
        if isinstance(value, list):
            return [self._resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: self._resolve(v) for k, v in value.items()}
        return value

    def _call(self, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        args, kwargs = self._resolve(args), self._resolve(kwargs)
        if any(isinstance(a, str) and a.startswith(PLACEHOLDER) for a in args):
            raise ConnectionError("the run is not created in MLflow yet")  # stays queued
        return getattr(self._client, method)(*args, **kwargs)

    def _write(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._entries:
                self.replay(force=False)
            if not self._entries:
                try:
                    return self._call(method, list(args), kwargs)
                except Exception as err:
                    if is_refusal(err):
                        raise
                    self._failed(err)
            entry = self._append(method, list(args), kwargs)
            if method == "create_run":
                return SimpleNamespace(info=SimpleNamespace(run_id=entry["placeholder"]))
            return None

    def _failed(self, err: BaseException) -> None:
        first = str(err).strip().splitlines()
        self.last_error = f"{type(err).__name__}: {first[0] if first else ''}"[:300]
        self._next_try = time.monotonic() + self._backoff
        self._backoff = min(60.0, self._backoff * 2)
        log.warning("MLflow write failed; buffered in %s (%s)", self.folder, self.last_error)

    def replay(self, *, force: bool = True) -> int:
        """Replay pending writes in order, stopping at the first that still fails.

        Without ``force`` only once the backoff has passed. Returns how many were replayed.
        """
        with self._lock:
            if not self._entries or (not force and time.monotonic() < self._next_try):
                return 0
            replayed = 0
            while self._entries:
                entry = self._entries[0]
                try:
                    result = self._call(entry["method"], _decode(entry["args"]),
                                        _decode(entry["kwargs"]))  # fmt: skip
                except Exception as err:
                    if not is_refusal(err):
                        self._failed(err)
                        return replayed
                    log.warning("MLflow refused a buffered %s; dropped: %s", entry["method"], err)
                    result = None
                run_id = getattr(getattr(result, "info", None), "run_id", None)
                self._mark_done(entry, run_id)
                self._entries.pop(0)
                replayed += 1
            self._backoff, self.last_error = 2.0, None
            self._compact()
            return replayed

    def _compact(self) -> None:
        """Everything replayed: clear the journal (keep the id map for placeholders)."""
        with open(self.folder / DONE, "w") as f:
            for placeholder, run_id in self._ids.items():
                f.write(json.dumps({"seq": -1, "placeholder": placeholder, "run_id": run_id}))
                f.write("\n")
        (self.folder / JOURNAL).unlink(missing_ok=True)
        shutil.rmtree(self.folder / "artifacts", ignore_errors=True)
        self._done = set()

    def flush(self, timeout: float = 60.0) -> int:
        """Retry the queue with backoff for up to ``timeout`` s; returns what is still pending."""
        deadline = time.monotonic() + timeout
        while self._entries:
            self.replay(force=True)
            if not self._entries or time.monotonic() >= deadline:
                break
            time.sleep(
                max(0.0, min(self._next_try - time.monotonic(), deadline - time.monotonic()))
            )
        return self.pending

    def close(self) -> None:
        """Stop counting this client in :func:`pending_writes`."""
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in WRITES:
            return lambda *args, **kwargs: self._write(name, *args, **kwargs)
        return getattr(self._client, name)


def buffered(client: Any, folder: str | None) -> Any:
    """``client`` with a write buffer in ``folder`` (a local path); the client itself when None.

    One buffer per folder and process (a restored Tuner brings its own tracker: both share it).
    Shortens MLflow's own HTTP retries (unless set): the buffer takes over an outage instead
    of blocking Tune's driver for minutes on one request.
    """
    if not folder or "://" in folder:
        return client
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    target = (Path(folder) / BUFFER_DIR).resolve()
    for active in _ACTIVE:
        if active.folder.resolve() == target:
            return active
    return BufferedClient(client, folder)


class TrackingBehindError(RuntimeError):
    """MLflow writes are still buffered when the sweep ends; the message names the sync command."""


FLUSH_ENV = "BITSWEEP_FLUSH_TIMEOUT_S"  # how long the end of a sweep retries MLflow (60 s)
COMPLETE_MARK = "sweep_complete"  # in the buffer folder: the fit ended, only MLflow is behind


def settle(folder: str, sync_hint: str, timeout: float = 60.0) -> None:
    """Flush ``folder``'s buffer before a summary is computed; raise when MLflow stays away.

    Raises :class:`TrackingBehindError` naming how many writes wait and ``sync_hint`` (the
    command that replays them), and marks the buffer so that the sync also writes the summary.
    """
    timeout = float(os.environ.get(FLUSH_ENV, timeout))
    target = (Path(folder) / BUFFER_DIR).resolve()
    for active in list(_ACTIVE):
        if active.folder.resolve() != target:
            continue
        left = active.flush(timeout)
        if left:
            (active.folder / COMPLETE_MARK).touch()
            raise TrackingBehindError(
                f"MLflow is unreachable ({active.last_error}); {left} writes of this sweep are "
                f"kept in {active.folder} and no summary was written: replay them with "
                f"`{sync_hint}` once the tracking server is back"
            )


def has_pending(folder: str) -> bool:
    """Whether ``folder`` (a sweep's) holds MLflow writes not yet replayed."""
    journal = Path(folder) / BUFFER_DIR / JOURNAL
    return journal.is_file() and journal.stat().st_size > 0
