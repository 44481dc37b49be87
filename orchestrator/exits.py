"""Every way a sweep's driver ends: SIGTERM like Ctrl+C, and no MLflow run left RUNNING.

``SIGTERM`` (``kill``, a scheduler's stop, ``timeout``) asks Tune to stop the way Ctrl+C does
while ``fit()`` runs (Tune saves its state one last time), and raises ``KeyboardInterrupt``
elsewhere; the CLI then exits 143 with the resume hint. :func:`close_open_runs` ends the runs a
driver leaves open (interrupted, crashed, or trials Tune never finished) with their real status.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

# bitsweep.status of a run whose driver stopped before it ended / whose trial Tune never saved
from orchestrator.run_layout import ABANDONED, INTERRUPTED

log = logging.getLogger(__name__)


class _State:
    terminated = False  # a SIGTERM arrived during this process
    in_fit = False  # Tune's stop handler is live (only while fit() runs)
    signals = 0


STATE = _State()


def received_sigterm() -> bool:
    """Whether this process was asked to stop with SIGTERM (the CLI then exits 143)."""
    return STATE.terminated


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    STATE.terminated = True
    STATE.signals += 1
    tune_handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    if STATE.in_fit and STATE.signals == 1 and callable(tune_handler):
        tune_handler(signal.SIGUSR1, frame)  # Tune's own "stop after a last checkpoint"
        return
    raise KeyboardInterrupt


def install_sigterm() -> Callable[[], None]:
    """Make SIGTERM behave like Ctrl+C until the returned function restores the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    STATE.signals = 0
    return lambda: signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def tune_fit() -> Iterator[None]:
    """Mark the span of ``tuner.fit()``: a SIGTERM in it goes to Tune's stop handler."""
    STATE.in_fit = True
    try:
        yield
    finally:
        STATE.in_fit = False


def close_open_runs(
    tracker: Any,
    *,
    run_status: str,
    tag: str,
    error: str | None = None,
    parent: bool = True,
) -> int:
    """End every RUNNING child run of ``tracker``'s sweep (and its parent with ``parent``).

    ``run_status`` is MLflow's (``KILLED``, ``FAILED``), ``tag`` the ``bitsweep.status`` value;
    ``error`` is kept as ``bitsweep.error``. Returns how many child runs were closed. MLflow
    failures are logged, never raised: this runs on the way out of an error already.
    """
    from orchestrator.run_layout import write_status

    closed = 0
    try:
        tracker.start()
        client = tracker.client
        for run in tracker._children():
            if run.info.status != "RUNNING":
                continue
            write_status(client, run.info.run_id, tag, run_status=run_status, error=error)
            closed += 1
        if parent and tracker.parent_run_id:
            write_status(client, tracker.parent_run_id, tag, run_status=run_status, error=error)
    except Exception as err:
        log.warning("could not close the sweep's open MLflow runs: %s", err)
    return closed


def close_abandoned(tracker: Any) -> int:
    """After a complete fit: end child runs still RUNNING (trials Tune never saved) as KILLED.

    Trials this driver ran that are still open were ended by Tune without ``on_trial_complete``
    (a stopper's stop-all: ``search.time_budget_s``, ``search.stop_at``): they end as the tracker
    ends any trial, ``stopped_early`` when they stopped before ``train.steps``.
    """
    if tracker is None:
        return 0
    from orchestrator.run_layout import RUNNING

    for trial_id, record in list(getattr(tracker, "_trials", {}).items()):
        if record.status == RUNNING:
            try:
                tracker.trial_finished(trial_id, stopped_early=record.short())
            except Exception as err:  # closing is best effort on the way out
                log.warning("could not close trial %s's run: %s", trial_id, err)
    reason = "its trial was not in Tune's saved state when the sweep resumed (driver killed)"
    return close_open_runs(tracker, run_status="KILLED", tag=ABANDONED, error=reason, parent=False)


def close_on_error(tracker: Any, err: BaseException) -> None:
    """End the sweep's open runs when the driver leaves through ``err``.

    Ctrl+C, SIGTERM and a Tune stop end them KILLED (``resume`` reopens them); any other error
    ends them FAILED with the error's first line as ``bitsweep.error``.
    """
    if tracker is None:
        return
    if not getattr(tracker, "started", False) and not getattr(tracker, "reuse", True):
        return  # a new sweep that failed before training: it has no runs to close
    from orchestrator.runner import SweepInterruptedError

    if isinstance(err, (KeyboardInterrupt, SweepInterruptedError)):
        close_open_runs(tracker, run_status="KILLED", tag=INTERRUPTED)
        return
    lines = str(err).strip().splitlines()
    reason = f"{type(err).__name__}: {lines[0] if lines else ''}"
    close_open_runs(tracker, run_status="FAILED", tag=INTERRUPTED, error=reason)


class _DropTrialTracebacks(logging.Filter):
    """Drops Tune's per-trial failure traceback; the progress view prints one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Trial task failed for trial")


def quiet_trial_failures(verbose: bool) -> None:
    """Unless ``verbose``: no 45-line traceback per failed trial on the console.

    The full text stays in the trial's ``error.txt`` (storage and MLflow artifact).
    """
    target = logging.getLogger("ray.tune.execution.tune_controller")
    for existing in [f for f in target.filters if isinstance(f, _DropTrialTracebacks)]:
        target.removeFilter(existing)
    if not verbose:
        target.addFilter(_DropTrialTracebacks())


def failure_line(trial: Any) -> str:
    """``trial <id> failed: <reason> (details: <trial folder>/error.txt)``: one line."""
    from orchestrator.tune_callbacks import trial_error_reason

    reason, _ = trial_error_reason(trial)
    where = getattr(trial, "path", None)
    details = f"{where}/error.txt" if where else "the trial's error.txt in MLflow"
    return f"trial {trial.trial_id} failed: {reason[:200]} (details: {details}; --verbose)"


def one_line(err: BaseException) -> str:
    """The first line of ``err`` (Tune's errors embed 30-line tracebacks), or the full-disk line.

    A full disk anywhere in the chain (``ENOSPC``, sqlite's "database or disk is full") is named
    as such, with the file when the error carries it.
    """
    if isinstance(err, StorageFullError):  # already one line naming the sweep's folder
        return str(err)
    full = storage_full(err)
    if full:
        return full
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return text + (" (details with --verbose)" if len(lines) > 1 else "")


def storage_full(err: BaseException) -> str | None:
    """A one-line 'disk full' message when ``err`` (or its cause) is one, else None."""
    import errno

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if (isinstance(current, OSError) and current.errno == errno.ENOSPC) or (
            "No space left on device" in text or "database or disk is full" in text
        ):
            where = getattr(current, "filename", None)
            if not where:
                import re

                # a path, not the tail of a URL such as sqlalchemy's https://sqlalche.me/e/...
                found = re.search(r"(?<![:/\w])(/[^\s'\":)]+)", text)
                where = found.group(1) if found else "the storage"
            return (
                f"no space left on device writing {where}: free space there or set storage.path "
                "to a larger disk, then continue with `bitsweep resume`"
            )
        current = current.__cause__ or current.__context__
    return None


class StorageFullError(RuntimeError):
    """The sweep's storage ran out of space; the message names the folder and what to do."""


def raise_if_full(err: BaseException, folder: str) -> None:
    """Re-raise a full-disk ``err`` as one :class:`StorageFullError` naming the sweep's folder."""
    if isinstance(err, StorageFullError) or storage_full(err) is None:
        return
    raise StorageFullError(
        f"no space left on device under {folder}: free space there or set storage.path to a "
        "larger disk, then continue with `bitsweep resume`"
    ) from err
