"""A last complete copy of Tune's saved state, so a driver killed mid-copy still resumes exactly.

Tune writes its experiment state and searcher in a local staging folder, then copies them over
the files in the storage folder in place: a driver killed during that copy (SIGKILL, power loss)
leaves a 0-byte or cut ``experiment_state-*.json`` there, and the sweep could only start over.
At each snapshot, once Tune has written the staging files (:class:`~orchestrator.digests.
DigestRecorder` calls :func:`save_snapshot`), the complete files are copied to
``.bitsweep_snapshot/`` beside them, atomically by folder rename; ``resume`` puts them back
(:func:`restore_snapshot`) when a state file in the storage is cut. The copies are digested like
the originals, so ``resume`` still refuses a file the sweep did not write. Local storage only:
a remote storage's copy is left to the object store's own atomic uploads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

SNAPSHOT_DIR = ".bitsweep_snapshot"
_OLD = f"{SNAPSHOT_DIR}.old"
_NEW = f"{SNAPSHOT_DIR}.new"
PICKLE_PROTOCOL = b"\x80"  # the first byte of a pickle of protocol 2 or later
PICKLE_STOP = b"."  # the last byte of every complete pickle (the STOP opcode)


def complete(path: Path) -> bool:
    """Whether a saved state file reads as whole: a pickle that ends, else JSON that parses.

    Tune's ``search_gen_state-*.json`` is a pickle despite its name: the content decides.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data.startswith(PICKLE_PROTOCOL):
        return data.endswith(PICKLE_STOP)
    try:
        return isinstance(json.loads(data or b"null"), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def save_snapshot(folder: str, staging: str, names: Iterable[str]) -> None:
    """Copy the complete staging files ``names`` to ``folder``'s snapshot (atomic swap).

    Nothing is copied when any of them is incomplete, so the snapshot is always one whole set.
    """
    if "://" in folder:
        return
    root, source = Path(folder), Path(staging)
    files = [source / name for name in names]
    if not files or not all(complete(f) for f in files):
        return
    fresh, current, old = root / _NEW, root / SNAPSHOT_DIR, root / _OLD
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    for f in files:
        shutil.copy2(f, fresh / f.name)
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        current.rename(old)  # a crash from here on leaves `old` for restore_snapshot
    fresh.rename(current)
    shutil.rmtree(old, ignore_errors=True)


def cut_files(folder: Path) -> list[Path]:
    """The state files in ``folder`` that are cut (see :func:`complete`)."""
    patterns = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")
    found = [p for pattern in patterns for p in folder.glob(pattern)]
    return sorted(p for p in found if not complete(p))


def restore_snapshot(folder: Path) -> list[str]:
    """Put the snapshot's files back into ``folder`` when a state file there is cut.

    Returns the names restored (empty when nothing was cut or there is no snapshot). A cut file
    the snapshot does not hold is left for the caller's check to name.
    """
    if not cut_files(folder):
        return []
    snapshot = next((d for d in (folder / SNAPSHOT_DIR, folder / _OLD) if d.is_dir()), None)
    if snapshot is None:
        return []
    restored = []
    for f in sorted(snapshot.iterdir()):
        if f.is_file() and complete(f):
            tmp = folder / f".{f.name}.restoring"
            shutil.copy2(f, tmp)
            tmp.replace(folder / f.name)  # atomic: a second crash leaves old or new, never half
            restored.append(f.name)
    return restored
