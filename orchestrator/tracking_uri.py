"""Which MLflow tracking store a sweep uses, and whether it can be used: checked before training.

:func:`resolve_tracking_uri` picks the URI (argument, ``MLFLOW_TRACKING_URI``, ``mlflow.db`` in
the working directory); :func:`check_reachable` fails fast when a writer cannot use it and
:func:`check_readable` when a reader would find nothing there; :func:`experiment_id` finds or
creates the sweep's experiment there. They raise :class:`TrackingUnreachableError` (a user error:
the CLI prints it in one line) with a message that names the URI and the fix. Imports neither
MLflow nor Ray.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .errors import UserError


class TrackingUnreachableError(UserError, RuntimeError):
    """The MLflow tracking server or store cannot be used; the message names the URI and the fix."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri`` if given, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def local_store_path(uri: str) -> Path | None:
    """The file or folder a local store URI points at (None for non-local schemes)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute.db; sqlite:// alone is in-memory.
        rest = uri[len("sqlite://") :]
        return Path(rest[1:]) if rest.startswith("/") else None
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a Windows drive)
        return Path(uri)
    return None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, if the tracking URI cannot be used.

    http(s): a short GET of ``/health`` (then the experiments API); sqlite and file stores: the
    folder must be writable. Raises :class:`TrackingUnreachableError` naming the URI and the fix.
    """
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("http", "https"):
        _check_http(uri, timeout)
        return
    path = local_store_path(uri)
    if path is None:
        return  # databricks, postgresql, ...: the MLflow client reports its own errors
    target = path if path.exists() else path.parent
    while not target.exists() and target != target.parent:
        target = target.parent
    if target != path and not target.is_dir():
        raise TrackingUnreachableError(
            f"MLflow store {uri} cannot be created: {target} is a file, not a folder; set "
            "tracking.uri in the sweep file or MLFLOW_TRACKING_URI to a path in a folder"
        )
    if not os.access(target, os.W_OK):
        raise TrackingUnreachableError(
            f"MLflow store {uri} is not writable ({target} is read-only): run from a writable "
            "folder, or set tracking.uri in the sweep file or MLFLOW_TRACKING_URI to another store"
        )


def check_readable(uri: str) -> None:
    """Reading must not create an empty store: a local one has to exist; a server must answer."""
    path = local_store_path(uri)
    if path is None:
        check_reachable(uri)
    elif not path.exists():
        where = "" if path.is_absolute() else f" in the working directory {Path.cwd()}"
        raise TrackingUnreachableError(
            f"MLflow store {uri} does not exist ({path} not found{where}): run a sweep first, "
            "or pass the tracking URI the sweep logged to (--tracking-uri, MLFLOW_TRACKING_URI "
            "or a notebook's BITSWEEP_TRACKING_URI; sqlite:////abs/path/mlflow.db)"
        )


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (marked as model training) when it is new.

    A deleted experiment of that name raises :class:`TrackingUnreachableError` saying how to
    restore it or choose another name.
    """
    from .naming import mark_experiment

    found = client.get_experiment_by_name(name)
    if found is None:
        created = client.create_experiment(name)
        mark_experiment(client, created)  # opens as model training, not GenAI
        return created
    if found.lifecycle_stage == "deleted":
        raise TrackingUnreachableError(
            f"MLflow experiment {name!r} at {uri} is deleted: restore it (mlflow experiments "
            "restore) or set tracking.experiment to another name"
        )
    return found.experiment_id


def _check_http(uri: str, timeout: float) -> None:
    base = uri.rstrip("/") + "/"
    reason = ""
    for probe in ("health", "api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            with urllib.request.urlopen(urllib.parse.urljoin(base, probe), timeout=timeout):
                return
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code != 404:
                return  # it answers (perhaps asking for credentials): MLflow's client takes over
            reason = f"HTTP {err.code} from /{probe.split('?')[0]}"
        except (urllib.error.URLError, OSError) as err:
            reason = str(getattr(err, "reason", err))
            break  # nothing listens: the second probe would fail the same way
    raise TrackingUnreachableError(
        f"MLflow tracking server {uri} is unreachable ({reason}): start it (mlflow server --host "
        "127.0.0.1 --port 5000) or set tracking.uri in the sweep file or MLFLOW_TRACKING_URI to "
        "a running server"
    )
