"""Checks of a sweep's saved state before ``resume`` touches it: one clear line per broken file.

A truncated ``experiment_state-*.json`` made every resume print "interrupted" forever, a 0-byte
``optuna.db`` failed with a ``KeyError`` traceback and a garbage one without naming the file.
:func:`check_restorable` reads (never unpickles) the files and raises :class:`StateFileError`
naming the file and what to do, and the CLI exits 2. The one change it makes: a state file cut by
a killed driver is put back from the sweep's last whole snapshot first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.state_snapshot import restore_snapshot

log = logging.getLogger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"


class StateFileError(UserError, RuntimeError):
    """A file of a sweep's saved state is unusable; the message names it and the way out."""


def _newest_state(folder: Path) -> Path | None:
    states = sorted(folder.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    return states[-1] if states else None


def check_restorable(folder: str, study_file: str = "optuna.db") -> None:
    """Raise :class:`StateFileError` when the local sweep ``folder`` cannot be resumed as is.

    A state file cut by a driver killed mid-copy is first put back from the sweep's last whole
    snapshot (:mod:`orchestrator.state_snapshot`). Remote storage (``s3://`` ...) is left to
    Tune's own errors.
    """
    if "://" in folder:
        return
    root = Path(folder)
    restored = restore_snapshot(root)  # a driver killed while Tune copied its state: put it back
    if restored:
        log.warning(
            "%s: a state file was cut (the driver died while Tune copied it); resuming from the "
            "last whole snapshot (%s)", folder, ", ".join(restored),
        )  # fmt: skip
    state = _newest_state(root)
    if state is not None:
        try:
            document = json.loads(state.read_bytes() or b"null")
            ok = isinstance(document, dict) and "trial_data" in document
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            several = len(list(root.glob("experiment_state-*.json"))) > 1
            older = "an older snapshot is then used" if several else "the sweep then starts over"
            raise StateFileError(
                f"{state} is truncated or not Tune's experiment state (a full disk or a crash "
                f"while it was written): move it away and resume again ({older}), or start the "
                "sweep again with `bitsweep run`"
            )
    db = root / study_file
    if db.exists():
        with open(db, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
        if header != SQLITE_HEADER:
            what = "empty (0 bytes)" if db.stat().st_size == 0 else "not an sqlite database"
            raise StateFileError(
                f"{db} is {what}: the sweep's Optuna study is lost. Restore it from a backup, or "
                "start the sweep again with `bitsweep run` (the finished trials stay in MLflow)"
            )
