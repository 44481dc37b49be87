"""Sweeps on a running Ray cluster through the Ray Job Submission API.

``submit`` validates the sweep here, refuses tracking or storage locations the cluster cannot
reach, and sends a job whose ``runtime_env`` carries the resolved sweep file (and, on request,
the project's packages). The entrypoint runs ``orchestrator.cli run`` with the interpreter of the
Python environment Ray itself runs from at the cluster (see :func:`entrypoint`), so it does not
depend on whatever ``python`` comes first on the head's PATH. The token is read the way Ray
reads it and sent as a bearer header; an authentication failure says so and how to provide it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from orchestrator.errors import UserError
from orchestrator.spec import SweepSpec

SWEEP_FILE = "sweep.yaml"
PACKAGES = ("orchestrator", "trainables", "search_spaces")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
# The job supervisor (/bin/sh's parent) is a Ray worker: its /proc/PID/cmdline reads
# "ray::JobSupervisor" (Ray retitles its workers) and /proc/PID/exe is the base interpreter a
# virtualenv's bin/python links to, which cannot import the virtualenv's packages. The Ray it
# runs is mapped from <prefix>/lib/pythonX.Y/site-packages/ray/_raylet.so, and <prefix>/bin
# holds the interpreter of that environment (a virtualenv's own bin/python, activated or not).
RAY_ENV_PYTHON = (
    'r=$(grep -o -m1 "/[^ ]*/ray/_raylet[.]so" /proc/$PPID/maps 2>/dev/null); '
    'v=${r%/lib*/python*/*-packages/ray/_raylet.so}; [ "$v" = "$r" ] && v=; '
)
# The candidates, first that imports bitsweep wins: BITSWEEP_PYTHON from the cluster's
# environment (cluster/local exports the one its ray runs on), the Python of the environment Ray
# runs from, the supervisor's executable, then python3; never just the first on the head's PATH.
CANDIDATES = (
    '"${BITSWEEP_PYTHON:-}" "${v:+$v/bin/python3}" "${v:+$v/bin/python}" '
    '"$(readlink -f /proc/$PPID/exe 2>/dev/null)" python3'
)
NO_PYTHON = (
    "bitsweep: no Python on this node can import bitsweep: install it there, submit with "
    "--ship-project, or set BITSWEEP_PYTHON"
)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class JobError(UserError):
    """A job-control problem the user can fix (address, token, tracking); exit code 2."""


@dataclass(frozen=True)
class Connection:
    """Where the cluster's dashboard is and the token to send it."""

    address: str
    token: str | None

    @property
    def loopback(self) -> bool:
        """True when the dashboard is on this machine."""
        return (urlparse(self.address).hostname or "") in LOOPBACK


def dashboard_address(address: str | None) -> str:
    """``--address``, else ``BITSWEEP_DASHBOARD_URL``, else an http ``RAY_ADDRESS``."""
    candidates = [address, os.environ.get("BITSWEEP_DASHBOARD_URL"), os.environ.get("RAY_ADDRESS")]
    for value in candidates:
        if value and value.startswith(("http://", "https://")):
            return value.rstrip("/")
        if value and value == address:
            return f"http://{value}".rstrip("/")
    raise JobError(
        "no cluster address: pass --address http://HEAD:8265 (the head's dashboard) or set "
        "BITSWEEP_DASHBOARD_URL (cluster/local/start-head.sh writes it to cluster.env)"
    )


def read_token() -> str | None:
    """The token from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    value = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if value:
        return value
    path_setting = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path_setting:
        path = Path(path_setting).expanduser()
        if not path.is_file() or not path.read_text().strip():
            raise JobError(f"RAY_AUTH_TOKEN_PATH names {path}, which is missing or empty")
        return path.read_text().strip()
    default = Path("~/.ray/auth_token").expanduser()
    return (
        default.read_text().strip() if default.is_file() and default.read_text().strip() else None
    )


@contextmanager
def _explicit_address() -> Iterator[None]:
    """The SDK prefers RAY_API_SERVER_ADDRESS / RAY_ADDRESS over its argument: hide them."""
    saved = {
        k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ
    }
    try:
        yield
    finally:
        os.environ.update(saved)


def client(address: str | None) -> Any:
    """A JobSubmissionClient for the cluster, sending the token; errors become :class:`JobError`."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    connection = Connection(dashboard_address(address), read_token())
    headers = {"Authorization": f"Bearer {connection.token}"} if connection.token else None
    try:
        with _explicit_address():
            return JobSubmissionClient(connection.address, headers=headers)
    except AuthenticationError as err:
        how = (
            "the token sent was refused: check it is the cluster's"
            if connection.token
            else "no token was found"
        )
        raise JobError(
            f"authentication failed at {connection.address} ({how}). Provide the cluster's token "
            "in RAY_AUTH_TOKEN, in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token "
            f"(on the head: ray get-auth-token). Ray said: {str(err).splitlines()[0]}"
        ) from None
    except ConnectionError as err:
        raise JobError(
            f"cannot reach the Ray dashboard at {connection.address}: {str(err).splitlines()[0]}; "
            "is the head running and the address its dashboard (port 8265)?"
        ) from None


def _local_path(uri_or_path: str) -> str | None:
    """The filesystem path behind a local tracking/storage location, None for remote ones."""
    parsed = urlparse(uri_or_path)
    if parsed.scheme in ("sqlite",):
        return uri_or_path.removeprefix("sqlite:///")
    if parsed.scheme in ("file", ""):
        return parsed.path or uri_or_path
    return None


def cluster_ready_spec(spec: SweepSpec, connection: Connection) -> SweepSpec:
    """``spec`` with tracking and storage the cluster can reach, or a :class:`JobError`.

    A sweep on a cluster logs to the tracking URI in its file: a server the cluster reaches.
    A local store is accepted only for a cluster on this machine and made absolute; a relative
    one would land in the job's temporary working directory and be lost.
    """
    uri = spec.tracking.resolved_uri()
    local_uri = _local_path(uri)
    updates: dict[str, Any] = {}
    if local_uri is not None:
        if not connection.loopback:
            raise JobError(
                f"tracking.uri {uri!r} is local to this machine, and the cluster at "
                f"{connection.address} cannot write to it: set tracking.uri to an MLflow server "
                "the cluster reaches (see cluster/local/mlflow-server.sh)"
            )
        absolute = Path(local_uri).expanduser().resolve()
        updates["tracking.uri"] = (
            f"sqlite:///{absolute}" if uri.startswith("sqlite") else str(absolute)
        )
    elif spec.tracking.uri is None:
        updates["tracking.uri"] = uri  # the submitter's MLFLOW_TRACKING_URI, made explicit
    storage = spec.storage.path
    if "://" not in storage:
        if not connection.loopback and not Path(storage).is_absolute():
            raise JobError(
                f"storage.path {storage!r} is relative: on a cluster use a shared location "
                "(s3://..., gs://..., or an absolute path every node mounts)"
            )
        updates["storage.path"] = str(Path(storage).expanduser().resolve())
    if not updates:
        return spec
    from orchestrator.spec import build_sweep

    return build_sweep(spec.to_document(), name=spec.name, preset=spec.preset, overrides=updates)


def entrypoint(args: list[str], python: str | None = None) -> str:
    """The job's shell command: ``python -m orchestrator.cli ARGS`` with ``python`` when given
    (``submit --python``), else with the first interpreter on the cluster that imports bitsweep
    (:data:`CANDIDATES`), or a one-line error and exit code 127 when none does."""
    command = " ".join(shlex.quote(a) for a in ["-m", "orchestrator.cli", *args])
    if python:
        return f"{shlex.quote(python)} {command}"
    return (
        f"{RAY_ENV_PYTHON}for p in {CANDIDATES}; do "
        f'[ -n "$p" ] && "$p" -c "import orchestrator" 2>/dev/null && exec "$p" {command}; done; '
        f"echo {shlex.quote(NO_PYTHON)} >&2; exit 127"
    )


def submit(
    spec: SweepSpec,
    *,
    address: str | None,
    ship_project: bool = False,
    python: str | None = None,
    job_id: str | None = None,
) -> tuple[Any, str]:
    """Submit ``spec`` as a Ray job; returns the client and the submission id."""
    jobs = client(address)
    connection = Connection(dashboard_address(address), read_token())
    spec = cluster_ready_spec(spec, connection)
    workdir = Path(tempfile.mkdtemp(prefix="bitsweep-job-"))
    try:
        (workdir / SWEEP_FILE).write_text(spec.to_yaml())
        runtime_env: dict[str, Any] = {"working_dir": str(workdir)}
        if ship_project:
            root = Path(__file__).resolve().parent.parent
            runtime_env["py_modules"] = [str(root / package) for package in PACKAGES]
        with _explicit_address():
            submission_id = jobs.submit_job(
                entrypoint=entrypoint(["run", SWEEP_FILE], python),
                runtime_env=runtime_env,
                submission_id=job_id,
                metadata={"bitsweep.sweep": spec.name},
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return jobs, submission_id


def wait(jobs: Any, submission_id: str, *, follow: bool = True, poll_s: float = 1.0) -> str:
    """Wait for the job to end, streaming its logs; returns its final status."""
    printed = 0
    while True:
        status = str(jobs.get_job_status(submission_id).value)
        if follow:
            logs = jobs.get_job_logs(submission_id)
            print(logs[printed:], end="", flush=True)
            printed = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)
