"""A sweep's folder: ``storage.path/<sweep id>``, with the resolved sweep file that ``resume``
reads back, Tune's state (``tuner.pkl``) and the Optuna study (``optuna.db``)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import NoSavedSweepError
from orchestrator.identity import SPEC_FILE, resolve_saved
from orchestrator.spec import SweepSpec, build_sweep

STUDY_FILE = "optuna.db"
TUNER_FILE = "tuner.pkl"  # written by tune.Tuner(); unpickled by Tuner.restore


def experiment_dir(spec: SweepSpec) -> str:
    """``storage.path/<sweep id>``: Tune's experiment directory for this sweep (the name for a
    spec without an id)."""
    return f"{spec.storage_path.rstrip('/')}/{spec.sweep_id or spec.name}"


def save_spec(spec: SweepSpec) -> None:
    """Store the resolved sweep beside its results (what ``resume`` reads back)."""
    import pyarrow.fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(experiment_dir(spec))
    filesystem.create_dir(path, recursive=True)
    from orchestrator.sync import with_absolute_uri

    # the absolute tracking URI: a resume from another folder must find the same store
    with filesystem.open_output_stream(f"{path}/{SPEC_FILE}") as stream:
        stream.write(with_absolute_uri(spec).to_yaml().encode())


def load_saved_spec(name: str, storage: str) -> SweepSpec:
    """The sweep ``name`` saved under ``storage`` by an earlier run (for ``resume``)."""
    import pyarrow.fs as pafs
    import yaml

    location = storage if "://" in storage else str(Path(storage).expanduser().resolve())
    folder = resolve_saved(name, storage)  # an id, or the newest sweep of that name
    filesystem, path = pafs.FileSystem.from_uri(f"{folder}/{SPEC_FILE}")
    try:
        with filesystem.open_input_stream(path) as stream:
            document = yaml.safe_load(stream.read().decode())
    except FileNotFoundError:
        raise NoSavedSweepError(
            f"no sweep named {name!r} under {location} (looked for {path}); pass --storage "
            "with the sweep's storage.path"
        ) from None
    return build_sweep(document, name=name, preset=document.get("preset"))
