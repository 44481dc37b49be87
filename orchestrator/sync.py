"""``bitsweep sync NAME``: replay a sweep's buffered MLflow writes; and absolute tracking URIs.

A sweep that ends while its tracking server is away keeps the writes it could not make in its
folder (``orchestrator.write_buffer``) and exits non-zero naming this command. Once the server is
back, ``sync`` replays them in order and, when the sweep itself had finished, closes the runs
Tune never ended and writes the parent's summary as the run would have.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any


def absolute_tracking_uri(uri: str) -> str:
    """``uri`` with a relative local store made absolute (against the current folder).

    ``sqlite:///mlflow.db`` run from two folders would be two stores, and a resumed sweep would
    split into two parents; the saved sweep records the absolute form instead.
    """
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        rest = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else None
        if rest is None or rest.startswith("/") or rest.startswith(":memory:") or not rest:
            return uri
        return f"sqlite:///{Path(rest).resolve()}"
    if parsed.scheme == "file" and not parsed.path.startswith("/"):
        return Path(uri[len("file:") :]).resolve().as_uri()
    if parsed.scheme == "" and uri:
        return str(Path(uri).expanduser().resolve())
    return uri


def with_absolute_uri(spec: Any) -> Any:
    """``spec`` (a SweepSpec) with ``tracking.uri`` set to the absolute URI it resolves to."""
    uri = absolute_tracking_uri(spec.tracking.resolved_uri())
    return spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"uri": uri})})


def sync_sweep(name: str, storage: str) -> Any:
    """Replay sweep ``name``'s buffered MLflow writes; returns the summary when one was written.

    Raises ``TrackingUnreachableError`` while MLflow is still away, and
    ``write_buffer.TrackingBehindError`` when writes still fail after the retries.
    """
    from orchestrator import exits, locking, write_buffer
    from orchestrator.runner import _summarize, sync_hint
    from orchestrator.sweep_folder import experiment_dir, load_saved_spec
    from orchestrator.tracking import SweepTracker

    spec = load_saved_spec(name, storage)
    folder = experiment_dir(spec)
    with locking.acquire(folder, spec.name):
        mark = Path(folder) / write_buffer.BUFFER_DIR / write_buffer.COMPLETE_MARK
        tracker = SweepTracker.for_sweep(spec, spec.tracking.resolved_uri(), reuse=True)
        tracker.buffer_dir = folder
        tracker.start()
        client = tracker.client
        pending = getattr(client, "pending", 0)
        write_buffer.settle(folder, sync_hint(spec), timeout=30.0)
        print(f"sweep {name}: replayed {pending} buffered MLflow writes")
        if not mark.exists():  # an interrupted sweep: leave its runs closed for `resume`
            exits.close_open_runs(tracker, run_status="KILLED", tag=exits.INTERRUPTED)
            return None
        exits.close_abandoned(tracker)
        outcome = _summarize(spec, tracker, None, folder)
        mark.unlink()
        return outcome
