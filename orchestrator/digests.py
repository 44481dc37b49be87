"""Signed digests of what a sweep's driver wrote, checked before ``resume`` unpickles anything.

``resume`` unpickles ``tuner.pkl``, Tune's searcher state and the trial records inside
``experiment_state-*.json`` (Tune's JSON embeds cloudpickled values): a file replaced in the
storage folder runs code in the resuming process. Storage may be shared (NFS, s3://), so the
folder alone is not trusted. Trust model (README "when things go wrong"): the driver records the
SHA-256 of each such file it writes in ``bitsweep_digests.json`` beside them, signed with an HMAC
key kept outside the storage (``~/.bitsweep/digest.key``, or ``$BITSWEEP_HOME``). Before
restoring, every such file must match a digest in a record whose signature checks with this
machine's key; otherwise ``resume`` refuses and names the file, before anything is unpickled.
Someone who can write the storage but cannot read the key cannot make ``resume`` run their
code. ``BITSWEEP_TRUST_STORAGE=1`` skips the check (a sweep made before digests existed, a
storage you alone write to). Checkpoint files that trainables load are not covered here.

Tune writes its state to a local staging folder and then copies it to the storage: the digests
are taken in the staging folder at each snapshot (:class:`DigestRecorder`, a Tune callback whose
``get_state`` Tune calls right after it wrote the state and the searcher) and travel with them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator.errors import UserError
from orchestrator.locking import bitsweep_home
from orchestrator.state_snapshot import save_snapshot

DIGESTS_FILE = "bitsweep_digests.json"
KEY_FILE = "digest.key"
TRUST_ENV = "BITSWEEP_TRUST_STORAGE"
KEEP = 6  # digests kept per file name (a copy to the storage may lag a snapshot or two)


class TamperedStateError(UserError, RuntimeError):
    """A file ``resume`` would unpickle does not match what the sweep's driver recorded."""


def guarded(name: str) -> bool:
    """Whether Tune unpickles (or decodes pickles from) the top-level file ``name`` on restore."""
    if name.startswith("tmp-") or name == DIGESTS_FILE:
        return False
    return name.endswith(".pkl") or (name.endswith(".json") and "state" in name)


def _key() -> bytes:
    """This machine's digest key, made on first use.

    Made whole under a private name, then linked into place: two drivers starting at once on a
    fresh machine both end with the one key that won, never a half-written one.
    """
    path = bitsweep_home() / KEY_FILE
    try:
        text = path.read_text().strip()
        if len(text) == 64:
            return bytes.fromhex(text)
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    private = path.with_name(f".{KEY_FILE}.{os.getpid()}")
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    try:
        os.link(private, path)  # atomic, and refused when another driver's key got there first
    except FileExistsError:
        pass
    finally:
        private.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def _mac(files: dict[str, list[str]]) -> str:
    body = json.dumps(files, sort_keys=True).encode()
    return hmac.new(_key(), body, hashlib.sha256).hexdigest()


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _fs(folder: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    location = folder if "://" in folder else str(Path(folder).expanduser().resolve())
    return pafs.FileSystem.from_uri(location)


def _read(folder: str, name: str) -> bytes | None:
    filesystem, root = _fs(folder)
    try:
        with filesystem.open_input_stream(f"{root}/{name}") as stream:
            return stream.read()
    except (FileNotFoundError, OSError):
        return None


def load_record(folder: str) -> dict[str, list[str]] | None:
    """The digests recorded in ``folder`` (None when absent, unreadable or wrongly signed)."""
    raw = _read(folder, DIGESTS_FILE)
    if raw is None:
        return None
    try:
        document = json.loads(raw)
        files = {str(k): [str(d) for d in v] for k, v in document["files"].items()}
        mac = str(document["mac"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return files if hmac.compare_digest(mac, _mac(files)) else None


def _merge(files: dict[str, list[str]], name: str, digest: str) -> None:
    kept = [d for d in files.get(name, []) if d != digest]
    files[name] = [digest, *kept][:KEEP]


def _write(folder: str, files: dict[str, list[str]]) -> None:
    document = json.dumps({"files": files, "mac": _mac(files)}, indent=1, sort_keys=True)
    if "://" not in folder:
        path = Path(folder) / DIGESTS_FILE
        tmp = path.with_name(f".{DIGESTS_FILE}.tmp")
        tmp.write_text(document)
        os.replace(tmp, path)  # atomic: a reader never sees half a record
        return
    filesystem, root = _fs(folder)
    with filesystem.open_output_stream(f"{root}/{DIGESTS_FILE}") as stream:
        stream.write(document.encode())


def record(folder: str, names: Iterable[str], source: str | None = None) -> dict[str, list[str]]:
    """Add the digests of ``names`` (read from ``source``, default ``folder``) to the record.

    The signed record is written to ``folder``; returns it.
    """
    files = load_record(folder) or {}
    for name in names:
        data = _read(source or folder, name)
        if data is not None:
            _merge(files, name, sha256(data))
    _write(folder, files)
    return files


def verify(folder: str) -> None:
    """Refuse (:class:`TamperedStateError`) a file Tune would unpickle that the sweep did not write.

    Call before ``Tuner.restore``. Nothing is unpickled here: files are only read and hashed.
    """
    if os.environ.get(TRUST_ENV) == "1":
        return
    import pyarrow.fs as pafs

    filesystem, root = _fs(folder)
    names = [
        e.base_name
        for e in filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        if e.type == pafs.FileType.File and guarded(e.base_name)
    ]
    files = load_record(folder)
    if files is None and names:
        raise TamperedStateError(
            f"{folder}/{DIGESTS_FILE} is missing or its signature does not match this machine's "
            f"key ({bitsweep_home() / KEY_FILE}): resume will not unpickle {', '.join(names)}. "
            f"Resume where the sweep ran (or copy that key here), or set {TRUST_ENV}=1 if only "
            "you can write this storage"
        )
    for name in sorted(names):
        data = _read(folder, name) or b""
        if sha256(data) not in (files or {}).get(name, []):
            raise TamperedStateError(
                f"{folder}/{name} is not the file this sweep wrote (its SHA-256 is not in the "
                f"signed {DIGESTS_FILE}): resume refuses to unpickle it. Restore the file from a "
                f"backup or start the sweep again; set {TRUST_ENV}=1 only if you trust it"
            )


def _staging_dirs(experiment: str) -> list[Path]:
    """Tune's local staging folders of ``experiment`` in this Ray session, newest first."""
    try:
        from ray._private import worker

        session = Path(worker._global_node.get_session_dir_path())
    except (AttributeError, ImportError, TypeError):
        return []
    found = list(session.glob(f"artifacts/*/{experiment}/driver_artifacts"))
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


class DigestRecorder(Callback):
    """Records the digests of each experiment snapshot Tune writes (see the module doc)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.staging: str | None = None

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """Learn the staging folder from a trial (Tune's own storage context)."""
        if self.staging is None and trials:
            storage = getattr(trials[0], "storage", None)
            staging = getattr(storage, "experiment_driver_staging_path", None)
            self.staging = str(staging) if staging else None

    def get_state(self) -> dict | None:
        """Called by Tune right after it saved its state: digest the files it just wrote."""
        staging = self.staging
        if staging is None:
            found = _staging_dirs(Path(self.folder).name)
            staging = str(found[0]) if found else None
        if staging is None or not Path(staging).is_dir():
            return None
        names = [p.name for p in Path(staging).iterdir() if p.is_file() and guarded(p.name)]
        try:
            files = record(self.folder, names, source=staging)
            _write(staging, files)  # travels to the storage with the files it describes
            # a whole copy that Tune's in-place copy to the storage cannot cut (a killed driver)
            save_snapshot(self.folder, staging, names)
        except OSError as err:  # a full disk: Tune's own save reports it; do not mask that
            import logging

            logging.getLogger(__name__).warning("could not record digests or snapshot: %s", err)
        return None  # nothing for Tune to pickle: no callback-state file to trust
