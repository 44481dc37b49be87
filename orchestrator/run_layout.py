"""The MLflow run layout of a sweep: what the tracker writes and the results API reads back.

One parent run per sweep (tag ``bitsweep.role`` = ``sweep``), one child run per Tune trial
(``bitsweep.role`` = ``trial``, MLflow's ``mlflow.parentRunId`` naming the parent). Each run
carries ``bitsweep.status`` (:data:`STATUSES`) and, when it failed, ``bitsweep.error``. Params are
the trial's dotted run config, encoded by :func:`encode_param`; metrics are the numeric result
keys that contain ``/`` and ``step`` (:func:`contract_metrics`). The trial table
(:func:`trial_table`) has one row per child run.

Written by :mod:`orchestrator.tracking`, read by :mod:`orchestrator.results`, the report, the
exits and the notebooks: change the layout here only. This module imports neither Ray, MLflow,
torch nor pandas at import time (MLflow's client and runs are passed in).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from .analysis import Objective


DEFAULT_EXPERIMENT = "bitsweep"

# ---- tags ----------------------------------------------------------------------------------------
TAG_ROLE = "bitsweep.role"  # ROLE_SWEEP on the parent run, ROLE_TRIAL on a child run
TAG_SWEEP = "bitsweep.sweep"  # the sweep's name (parent and children)
TAG_SWEEP_ID = "bitsweep.sweep_id"  # one id per run of a name (orchestrator.identity)
TAG_TRIAL_ID = "bitsweep.trial_id"  # Tune's trial id (children)
TAG_STATUS = "bitsweep.status"  # one of STATUSES
TAG_ERROR = "bitsweep.error"  # the one-line reason of a failed or interrupted run
TAG_EXPLOITED_FROM = "bitsweep.exploited_from"  # PBT: the donor trial of the latest exploit
TAG_OBJECTIVES = "bitsweep.objectives"  # JSON [[metric, mode], ...] (parent)
TAG_VERSION = "bitsweep.version"
TAG_PRESET = "bitsweep.preset"
TAG_GIT_COMMIT = "bitsweep.git_commit"
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own tag, shown in its UI
PARENT_RUN_TAG = "mlflow.parentRunId"  # mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID
ROLE_SWEEP, ROLE_TRIAL = "sweep", "trial"

# ---- statuses (values of TAG_STATUS) -------------------------------------------------------------
RUNNING, FINISHED, STOPPED_EARLY, FAILED = "running", "finished", "stopped_early", "failed"
INTERRUPTED = "interrupted"  # a run whose driver stopped before it ended (orchestrator.exits)
ABANDONED = "abandoned"  # a run whose trial Tune never saved (a killed driver)
STATUSES = (RUNNING, FINISHED, STOPPED_EARLY, FAILED, INTERRUPTED, ABANDONED)

# ---- artifacts -----------------------------------------------------------------------------------
SWEEP_YAML = "sweep.yaml"  # parent: the resolved sweep file
SEARCH_SPACE_JSON = "search_space.json"  # parent: the sweep's ``search`` block
TRIALS_TABLE = "trials.parquet"  # parent: the trial table at the sweep's end
BEST_TRIAL_JSON = "best_trial.json"  # parent: the best trial per objective (and the front)
ABLATION_DIR = "ablation"  # parent: <name>.parquet/.csv/.png and <name>_cells.parquet/.csv
CELLS_SUFFIX = "_cells.parquet"
PARETO_FRONT = "pareto/front.parquet"  # parent: with .csv and .png beside it
ERROR_TXT = "error.txt"  # child: the failed trial's traceback
PACKED_MODEL = "model/packed"  # child: the packed model of the final checkpoint
PACKED_DIR = "packed"  # the sub-directory of a final checkpoint that holds the packed model
ARTIFACTS_DIR = "artifacts"  # a checkpoint's files for the run's artifact root (trainables)

# ---- MLflow's limits (mlflow.utils.validation): checked so a long value never fails a batch ------
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
PAGE_SIZE = 1000  # runs per search_runs page

RUN_ID = re.compile(r"^[0-9a-f]{32}$")  # an MLflow run id
# The trial table's leading columns; params and metrics follow, then BEST_PREFIX columns.
TABLE_KEYS = ("trial_id", "run_id", "status", "error")
BEST_PREFIX = "best/"
# the long-form metric history the results API returns and the plots read
HISTORY_COLUMNS = ("trial_id", "run_id", "metric", "step", "value")


# ---- params and metrics --------------------------------------------------------------------------


def encode_param(value: Any) -> str:
    """An MLflow param value: a string as is, anything else as JSON (``true``, ``[2, 4]``)."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            text = str(value)
    return text[:MAX_PARAM_VALUE]


def decode_param(text: str) -> Any:
    """Undo :func:`encode_param` where the text is JSON; other strings stay strings."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def is_metric(name: str) -> bool:
    """Whether a trial-table column (or result key) is a metric: it contains ``/``, or ``step``."""
    return "/" in name or name == "step"


def contract_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics-contract values of a Tune result: numeric keys containing ``/``, and ``step``.

    Tune's own bookkeeping (``training_iteration``, ``time_this_iter_s``, ...) is left out.
    """
    metrics: dict[str, float] = {}
    for key, value in result.items():
        if not (isinstance(key, str) and is_metric(key)):
            continue
        if isinstance(value, bool) or not hasattr(value, "__float__"):
            continue
        try:
            metrics[key[:MAX_KEY]] = float(value)
        except (TypeError, ValueError):
            continue
    return metrics


def encode_objectives(objectives: Iterable[Objective]) -> str:
    """The parent's ``bitsweep.objectives`` tag: ``[["val/acc", "max"], ...]``."""
    return json.dumps([list(o) for o in objectives])


def decode_objectives(text: str | None) -> list[Objective]:
    """Undo :func:`encode_objectives`; an unreadable tag reads as no objectives."""
    try:
        raw = json.loads(text or "[]")
        return [(str(m), "max" if mode == "max" else "min") for m, mode in raw]
    except (TypeError, ValueError):
        return []


def best_value(values: Iterable[float], mode: str) -> float:
    """The best of ``values`` by ``mode`` (``min``/``max``), NaN ignored; NaN when none is left."""
    finite = [float(v) for v in values if not math.isnan(v)]
    if not finite:
        return math.nan
    return min(finite) if mode == "min" else max(finite)


def completed(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a trial table that did not fail: a failed trial's partial metrics are no
    result, so fronts, best trials and importances leave it out."""
    return table[table["status"] != FAILED] if "status" in table else table


# ---- tags of the runs ----------------------------------------------------------------------------


def parent_tags(
    sweep: str,
    objectives: Iterable[Objective],
    *,
    version: str,
    preset: str | None = None,
    commit: str | None = None,
) -> dict[str, str]:
    """The tags that describe a sweep's parent run (its status starts as ``running``)."""
    tags = {
        TAG_ROLE: ROLE_SWEEP,
        TAG_SWEEP: sweep,
        TAG_VERSION: version,
        TAG_OBJECTIVES: encode_objectives(objectives),
        TAG_STATUS: RUNNING,
    }
    if commit:
        tags[TAG_GIT_COMMIT] = tags[MLFLOW_GIT_COMMIT] = commit
    if preset:
        tags[TAG_PRESET] = preset
    return tags


def trial_tags(parent_run_id: str, sweep: str, trial_id: str) -> dict[str, str]:
    """The tags a trial's child run is created with."""
    return {
        PARENT_RUN_TAG: parent_run_id,
        TAG_ROLE: ROLE_TRIAL,
        TAG_SWEEP: sweep,
        TAG_TRIAL_ID: trial_id,
        TAG_STATUS: RUNNING,
    }


def end_tags(status: str, error: str | None = None) -> dict[str, str]:
    """The tags that end a run: its status and, when given, the error (cut to MLflow's limit)."""
    tags = {TAG_STATUS: status}
    if error:
        tags[TAG_ERROR] = error[:MAX_TAG_VALUE]
    return tags


def write_status(
    client: MlflowClient,
    run_id: str,
    status: str,
    *,
    run_status: str | None = None,
    error: str | None = None,
) -> None:
    """Tag a run's ``status`` (and ``error``), then set MLflow's own status: ``RUNNING``
    reopens the run, ``FINISHED``/``FAILED``/``KILLED`` end it, None leaves it."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in end_tags(status, error).items()])
    if run_status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    elif run_status is not None:
        client.set_terminated(run_id, status=run_status)


# ---- finding runs --------------------------------------------------------------------------------


SWEEPS_FILTER = f"tags.`{TAG_ROLE}` = '{ROLE_SWEEP}'"  # search_runs filter: every parent run


def parent_filter(tag: str, value: str) -> str:
    """The search filter for the parent runs whose ``tag`` is ``value`` (no quotes in it)."""
    if any(q in value for q in "'\"`\\"):
        raise ValueError(f"{value!r} cannot be matched in an MLflow filter: it holds a quote")
    return f"tags.`{tag}` = '{value}' and {SWEEPS_FILTER}"


def newest_parent(client: MlflowClient, experiment_id: str, tag: str, value: str) -> Run | None:
    """The newest parent run in the experiment whose ``tag`` (name or sweep id) is ``value``."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=parent_filter(tag, value),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def sweep_names(client: MlflowClient, experiment_id: str) -> list[str]:
    """The names of the experiment's sweeps (their parent runs' ``bitsweep.sweep``), sorted."""
    runs = client.search_runs([experiment_id], SWEEPS_FILTER, max_results=PAGE_SIZE)
    return sorted({r.data.tags.get(TAG_SWEEP, r.info.run_id) for r in runs})


def get_run(client: MlflowClient, run_id: str) -> Run | None:
    """The run with that id, or None when the store has none."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """Every trial run of the parent (all pages), ordered by trial id."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.{PARENT_RUN_TAG} = '{parent_run_id}'",
            max_results=PAGE_SIZE,
            page_token=token,
        )
        runs.extend(r for r in page if TAG_TRIAL_ID in r.data.tags)
        token = page.token
        if not token:
            return sorted(runs, key=lambda r: r.data.tags[TAG_TRIAL_ID])


class SweepLookupError(UserError, LookupError):
    """No parent run for the sweep name or id asked for; the message says what the store holds."""


def find_sweep_parent(client: MlflowClient, uri: str, experiment: str, sweep: str) -> Run:
    """The parent run of ``sweep``: the newest with that sweep id or name in ``experiment``, or
    the parent run with that id (in any experiment). Raises :class:`SweepLookupError` naming the
    sweeps (or experiments) there, or the parent of a trial run's id."""
    found = client.get_experiment_by_name(experiment)
    quoted = any(q in sweep for q in "'\"`\\")  # cannot be a sweep name; would break the filter
    if found is not None and sweep and not quoted:
        for tag in (TAG_SWEEP_ID, TAG_SWEEP):  # an exact sweep id, else the name
            run = newest_parent(client, found.experiment_id, tag, sweep)
            if run is not None:
                return run
    run = get_run(client, sweep) if RUN_ID.match(sweep) else None
    if run is not None:
        tags = run.data.tags
        if tags.get(TAG_ROLE) == ROLE_SWEEP:
            return run
        if tags.get(TAG_ROLE) == ROLE_TRIAL:
            raise SweepLookupError(
                f"run {sweep} is trial {tags.get(TAG_TRIAL_ID)} of sweep {tags.get(TAG_SWEEP)!r}; "
                f"pass the sweep's name or its parent run id {tags.get(PARENT_RUN_TAG)}"
            )
        raise SweepLookupError(f"run {sweep} at {uri} is not a bitsweep sweep's parent run")
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise SweepLookupError(
            f"no sweep {sweep!r} at {uri}: experiment {experiment!r} does not exist (experiments "
            f"there: {', '.join(names) or 'none'}); pass --experiment / experiment="
        )
    names = sweep_names(client, found.experiment_id)
    listed = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    raise SweepLookupError(
        f"no sweep named {sweep!r} (and no parent run with that id) in experiment "
        f"{experiment!r} at {uri}; sweeps there: {listed or 'none'}"
    )


History = list[tuple[int, float]]  # a metric's (step, value) points, by step


def metric_history(client: MlflowClient, run_id: str, metric: str) -> History:
    """A run's logged values of ``metric`` as (step, value), ordered by step."""
    points = client.get_metric_history(run_id, metric)
    return sorted(((int(m.step), float(m.value)) for m in points), key=lambda p: p[0])


def metric_histories(
    client: MlflowClient, pairs: Iterable[tuple[str, str]], *, parallel: bool = False
) -> dict[tuple[str, str], History]:
    """:func:`metric_history` of each (run id, metric); ``parallel`` overlaps the round trips
    (one request per pair) against a server."""
    todo = list(dict.fromkeys(pairs))
    if parallel and len(todo) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=8) as pool:
            found = list(pool.map(lambda key: metric_history(client, *key), todo))
    else:
        found = [metric_history(client, *key) for key in todo]
    return dict(zip(todo, found, strict=True))


# ---- the trial table -----------------------------------------------------------------------------


def trial_row(run: Run, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One trial table row from a child run: ids, status, error, params, final metrics.

    Params are decoded from MLflow's text; ``params`` (typed values this process holds) win.
    """
    tags = run.data.tags
    decoded = {k: decode_param(v) for k, v in run.data.params.items()}
    return {
        "trial_id": tags[TAG_TRIAL_ID],
        "run_id": run.info.run_id,
        "status": tags.get(TAG_STATUS, RUNNING),
        "error": tags.get(TAG_ERROR),
        **decoded,
        **(params or {}),
        **run.data.metrics,
    }


BestOf = Callable[["Run", str, str], float]  # (child run, metric, mode) -> its best value


def trial_table(
    runs: Sequence[Run],
    objectives: Sequence[Objective] = (),
    *,
    params: Callable[[Run], Mapping[str, Any] | None] | None = None,
    best: BestOf | None = None,
) -> pd.DataFrame:
    """The trial table of a sweep's child runs (see :func:`child_runs`).

    Columns: :data:`TABLE_KEYS`, the params (sorted), the final metrics (sorted, float), and
    ``best/<metric>`` per objective: ``best(run, metric, mode)``, NaN where ``best`` is None
    (the caller fills it). ``params(run)`` overrides a run's decoded params.
    """
    import pandas as pd

    rows = [trial_row(run, params(run) if params else None) for run in runs]
    metrics = sorted({k for run in runs for k in run.data.metrics})
    keys = {k for row in rows for k in row}
    names = sorted(keys - set(TABLE_KEYS) - set(metrics))
    frame = pd.DataFrame(rows, columns=[*TABLE_KEYS, *names, *metrics])
    # object, not pandas' string dtype: a trial without an error reads None rather than NaN
    frame["error"] = pd.Series([row["error"] for row in rows], index=frame.index, dtype=object)
    for name in metrics:
        frame[name] = frame[name].astype("float64")
    for name, mode in objectives:
        values = [best(run, name, mode) for run in runs] if best else [math.nan] * len(runs)
        frame[f"{BEST_PREFIX}{name}"] = pd.Series(values, index=frame.index, dtype="float64")
    return frame
