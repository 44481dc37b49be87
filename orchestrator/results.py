"""Read a sweep back from MLflow for analysis: the trial table, metric histories, Pareto fronts and
ablation matrices. What notebooks and ``bitsweep report`` use.

``load_sweep_results("br-ablation")`` finds the sweep's parent run (tag ``bitsweep.sweep``, the
newest if the name ran several times) or takes a parent run id, then reads its child runs into a
:class:`SweepResults`. The run layout is :mod:`orchestrator.run_layout`, which
:mod:`orchestrator.tracking` writes; the same code reads a local sqlite/file store and an MLflow
server. Imports neither Ray nor torch.
"""

from __future__ import annotations

import difflib
import os
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from .ablation_keys import CellKeys, cell_keys
from .analysis import (
    Objective,
    ablation_table,
    matrices_from_table,
    pareto_front,
)
from .errors import UserError
from .run_layout import (
    BEST_PREFIX,
    DEFAULT_EXPERIMENT,
    FAILED,
    TABLE_KEYS,
    TAG_OBJECTIVES,
    TAG_SWEEP,
    SweepLookupError,
    best_value,
    child_runs,
    completed,
    decode_objectives,
    find_sweep_parent,
    is_metric,
    metric_histories,
    trial_table,
)
from .run_layout import HISTORY_COLUMNS as _HISTORY_COLUMNS
from .sweep_artifacts import ParentArtifacts, arrow_safe
from .tracking_uri import check_readable, resolve_tracking_uri


def _hush_notebook_noise() -> None:
    """Optuna and Ray import ``tqdm.auto``, which in a notebook kernel without ipywidgets warns
    "IProgress not found" (and Ray logs a widgets hint): noise in the first cell of every analysis
    notebook. tqdm warns once, at its first import, so importing it here hushed silences it."""
    import contextlib
    import logging
    import warnings

    logging.getLogger("ray.widgets.util").setLevel(logging.WARNING)
    with warnings.catch_warnings(), contextlib.suppress(ImportError):
        warnings.filterwarnings("ignore", message="IProgress not found")
        import tqdm.auto  # noqa: F401


_hush_notebook_noise()

HISTORY_COLUMNS = list(_HISTORY_COLUMNS)


class ResultsError(UserError, ValueError):
    """A request the sweep's results cannot answer (an unknown metric, trial or key)."""


class SweepNotFoundError(ResultsError):
    """No sweep of that name, and no parent run with that id, in the tracking store."""


@dataclass(eq=False)  # holds DataFrames and a client: identity is the only sensible equality
class SweepResults:
    """One sweep read from MLflow.

    ``trials`` has one row per trial: ``trial_id``, ``run_id``, ``status`` (``finished``,
    ``stopped_early``, ``failed``, ``running``), ``error``, the typed dotted params, the final
    (latest-step) value of every metric, and ``best/<metric>`` per objective: its best value over
    the trial's whole history by the objective's mode.
    """

    parent_run_id: str
    name: str
    objectives: list[Objective]
    trials: pd.DataFrame
    tracking_uri: str
    experiment: str
    tags: dict[str, str] = field(default_factory=dict)
    _client: Any = field(default=None, repr=False)
    _history: dict[tuple[str, str], list[tuple[int, float]]] = field(
        default_factory=dict, repr=False
    )
    _artifacts: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        counts = self.trials["status"].value_counts().to_dict() if len(self.trials) else {}
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
        objectives = ", ".join(f"{m} ({mode})" for m, mode in self.objectives)
        return (
            f"SweepResults({self.name!r}, parent run {self.parent_run_id}, {len(self.trials)} "
            f"trials: {summary}; objectives: {objectives or 'none'})"
        )

    # ---- tables ---------------------------------------------------------------------------------

    @property
    def metrics(self) -> list[str]:
        """The metric names of the trial table (final values), ``best/`` columns excluded."""
        return [c for c in self.trials.columns if is_metric(c) and not c.startswith(BEST_PREFIX)]

    @property
    def params(self) -> list[str]:
        """The param (dotted config key) columns of the trial table."""
        skip = set(TABLE_KEYS)
        return [c for c in self.trials.columns if c not in skip and not is_metric(c)]

    def completed_trials(self) -> pd.DataFrame:
        """The trials that did not fail (finished or stopped early, or still running)."""
        return completed(self.trials)

    def to_arrow(self) -> pa.Table:
        """The trial table as a pyarrow Table; a param mixing types (``"auto"`` and ``true``)
        becomes text, as MLflow shows it."""
        return pa.Table.from_pandas(arrow_safe(self.trials), preserve_index=False)

    def summary(self) -> pd.DataFrame:
        """A compact trial table: ids, status, the searched keys, objectives (final and best),
        sorted by the first objective (best first; failed trials last)."""
        objective_cols = [m for m, _ in self.objectives if m in self.trials]
        best_cols = [f"{BEST_PREFIX}{m}" for m, _ in self.objectives]
        keys = [k for k in self.searched_keys() if k in self.trials]
        columns = ["trial_id", "status", *keys, *objective_cols, *best_cols, "run_id"]
        table = self.trials[[c for c in dict.fromkeys(columns) if c in self.trials]]
        if objective_cols and len(table):
            metric, mode = self.objectives[0]
            values = pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype=float)
            rank = pd.DataFrame({"failed": (table["status"] == FAILED).to_numpy(), "key": values})
            if mode == "max":
                rank["key"] = -rank["key"]
            order = rank.sort_values(["failed", "key"], na_position="last", kind="stable").index
            table = table.iloc[order]
        return table.reset_index(drop=True)

    def trial_labels(self, keys: Sequence[str] | None = None) -> dict[str, str]:
        """Legend text per trial id: the id and the values of ``keys`` (default: searched)."""
        keys = [k for k in (self.searched_keys() if keys is None else keys) if k in self.trials]
        labels = {}
        for _, row in self.trials.iterrows():
            values = [f"{k.rsplit('.', 1)[-1]}={_short(row[k])}" for k in keys]
            labels[row["trial_id"]] = " ".join([str(row["trial_id"]), *values])
        return labels

    def best(self, objective: str | None = None) -> pd.Series:
        """The trial row with the best final value of ``objective`` (default: the first one),
        among the trials that did not fail."""
        metric, mode = self._objective(objective)
        completed = self.completed_trials()
        values = pd.to_numeric(completed[metric], errors="coerce") if metric in completed else None
        if values is None or values.isna().all():
            raise ResultsError(f"no completed trial of sweep {self.name!r} reported {metric!r}")
        index = values.idxmin() if mode == "min" else values.idxmax()
        return self.trials.loc[index]

    # ---- histories ------------------------------------------------------------------------------

    def history(
        self, metrics: Sequence[str] | str, trial_ids: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Step-wise values of ``metrics`` for ``trial_ids`` (default: every trial), long form:
        ``trial_id``, ``run_id``, ``metric``, ``step``, ``value``, sorted in that order."""
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        for name in names:
            self._require_metric(name)
        runs = self._runs(trial_ids)
        self._fetch([(run_id, name) for _, run_id in runs for name in names])
        rows = [
            (trial, run_id, name, step, value)
            for trial, run_id in runs
            for name in names
            for step, value in self._history[(run_id, name)]
        ]
        frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
        frame["step"] = frame["step"].astype("int64")
        frame["value"] = frame["value"].astype("float64")
        return frame.sort_values(["trial_id", "metric", "step"], kind="stable").reset_index(
            drop=True
        )

    def _runs(self, trial_ids: Sequence[str] | None) -> list[tuple[str, str]]:
        pairs = list(zip(self.trials["trial_id"], self.trials["run_id"], strict=True))
        if trial_ids is None:
            return pairs
        known = dict(pairs)
        missing = [t for t in trial_ids if t not in known]
        if missing:
            raise ResultsError(
                f"sweep {self.name!r} has no trials {missing}; its trials: {sorted(known)}"
            )
        return [(t, known[t]) for t in dict.fromkeys(trial_ids)]

    def _require_metric(self, name: str) -> None:
        if name in self.metrics:
            return
        close = difflib.get_close_matches(name, self.metrics, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ResultsError(f"no trial of sweep {self.name!r} reported metric {name!r}{hint}")

    def _fetch(self, todo: Sequence[tuple[str, str]]) -> None:
        """Fill the history cache for (run id, metric) pairs, in parallel against a server."""
        todo = [key for key in dict.fromkeys(todo) if key not in self._history]
        remote = urllib.parse.urlparse(self.tracking_uri).scheme in ("http", "https")
        self._history.update(metric_histories(self._client, todo, parallel=remote))

    # ---- analysis -------------------------------------------------------------------------------

    def _objective(self, objective: str | Objective | None) -> Objective:
        if objective is None:
            if not self.objectives:
                raise ResultsError(f"sweep {self.name!r} records no objectives; name a metric")
            return self.objectives[0]
        if isinstance(objective, str):
            modes = dict(self.objectives)
            if objective not in modes:
                raise ResultsError(
                    f"{objective!r} is not an objective of sweep {self.name!r} "
                    f"({[m for m, _ in self.objectives]}); pass ({objective!r}, 'min'|'max')"
                )
            return objective, modes[objective]
        metric, mode = objective
        return str(metric), mode

    def pareto(
        self, objectives: Sequence[str | Objective] | None = None, *, include_failed: bool = False
    ) -> pd.DataFrame:
        """The non-dominated trials for ``objectives`` (default: the sweep's), by final values.

        An objective is ``(metric, "min"|"max")`` or the name of one of the sweep's objectives.
        Failed trials' partial metrics take no part unless ``include_failed``.
        """
        chosen = [self._objective(o) for o in (objectives or self.objectives)]
        table = self.trials if include_failed else self.completed_trials()
        try:
            return pareto_front(table, chosen)
        except ValueError as err:
            raise ResultsError(f"sweep {self.name!r}: {err}") from None

    def ablation_selection(
        self, value: str, at_step: int | None = None
    ) -> tuple[pd.DataFrame, str]:
        """(table, label): finished trials' final values by default, or with ``at_step`` every
        trial's value logged at that step (finished and stopped early); failed trials keep their
        cell but add no value. The label says which (orchestrator.ablation_select)."""
        from .ablation_select import select_values

        def history(run_id: str, metric: str) -> list[tuple[int, float]]:
            self._fetch([(run_id, metric)])
            return self._history[(run_id, metric)]

        return select_values(self.trials, value, at_step=at_step, history=history)

    def ablation_keys(
        self, rows: str, cols: str | None, *, marginalize: Sequence[str] = ()
    ) -> CellKeys:
        """Which searched keys split the cells of a rows x cols matrix, and which a cell averages
        over (the seeds; sampled continuous keys and ``marginalize`` as marginalized), from the
        sweep's search space (orchestrator.ablation_keys)."""
        try:
            return cell_keys(self.search_space(), self.trials, rows, cols, marginalize=marginalize)
        except ValueError as err:
            raise ResultsError(f"sweep {self.name!r}: {err}") from None

    def ablation(
        self,
        rows: str,
        cols: str | None,
        value: str,
        *,
        at_step: int | None = None,
        marginalize: Sequence[str] = (),
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The rows x cols matrices of the mean and sample std (ddof=1) of ``value`` over the
        training seeds. Other discrete searched keys stay separate rows (labelled
        ``"<row> · <key>=<value>"``), sampled continuous ones and ``marginalize`` are averaged over
        (:meth:`ablation_keys` names them). ``cols=None``: by ``rows`` alone. Finished trials'
        final values, or every trial's at ``at_step``; failed trials keep their cell but add no
        value. Counts: :meth:`ablation_counts`."""
        cells = self.ablation_cells(rows, cols, value, at_step=at_step, marginalize=marginalize)
        return matrices_from_table(cells, rows, cols, value)[:2]

    def ablation_cells(
        self,
        rows: str,
        cols: str | None,
        value: str,
        *,
        at_step: int | None = None,
        marginalize: Sequence[str] = (),
    ) -> pd.DataFrame:
        """One row per cell of :meth:`ablation`: the keys (rows, cols, then the split keys, each
        in its own column), ``mean``, ``std`` and ``count`` of ``value``; ``attrs["ablation"]``
        names the seeds and the marginalized keys."""
        keys = self.ablation_keys(rows, cols, marginalize=marginalize)
        table = self.ablation_selection(value, at_step)[0]
        try:
            return ablation_table(table, rows, cols, value, keys=keys)
        except ValueError as err:
            raise ResultsError(f"sweep {self.name!r}: {err}") from None

    def ablation_counts(
        self,
        rows: str,
        cols: str | None,
        value: str,
        *,
        at_step: int | None = None,
        marginalize: Sequence[str] = (),
    ) -> pd.DataFrame:
        """How many trials' values each cell of :meth:`ablation` aggregates (0 where none)."""
        cells = self.ablation_cells(rows, cols, value, at_step=at_step, marginalize=marginalize)
        return matrices_from_table(cells, rows, cols, value)[2]

    # ---- the parent's artifacts (orchestrator.sweep_artifacts) ---------------------------------

    @property
    def files(self) -> ParentArtifacts:
        """The parent run's artifacts, read back (texts cached on this object)."""
        return ParentArtifacts(self._client, self.parent_run_id, self._artifacts)

    def artifact_paths(self, folder: str = "") -> list[str]:
        """The parent run's artifact paths in ``folder`` (not recursive)."""
        return self.files.paths(folder)

    def download_artifact(self, path: str, dst: str | Path) -> Path:
        """Download one parent artifact (file or folder) into ``dst``; returns the local path."""
        return self.files.download(path, dst)

    def spec(self) -> dict[str, Any] | None:
        """The resolved sweep file (the parent's ``sweep.yaml``) as a dict, if it was logged."""
        return self.files.spec()

    def ablation_specs(self) -> list[dict[str, Any]]:
        """The sweep file's ``ablation`` list: ``name``, ``rows``, ``cols``, ``value`` each."""
        return self.files.ablation_specs()

    def stored_ablations(self) -> dict[str, pd.DataFrame]:
        """The ``ablation/<name>_cells.parquet`` tables the sweep wrote at its end, by name."""
        return self.files.stored_ablations()

    def searched_keys(self) -> list[str]:
        """The keys the sweep searched (its ``search_space.json``, else its ``sweep.yaml``)."""
        return self.files.searched_keys()

    def search_space(self) -> dict[str, Any] | None:
        """The searched keys and their distributions (``{key: {dist: ...}}``), if logged."""
        return self.files.search_space()


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def find_store(start: str | Path | None = None, levels: int = 3) -> str:
    """The tracking URI a notebook should read by default: ``MLFLOW_TRACKING_URI`` when set,
    else the ``mlflow.db`` that ``bitsweep run`` (``make demo``) wrote in the working directory or
    one of its parents (a notebook runs in ``notebooks/``), as an absolute ``sqlite:////`` URI;
    ``sqlite:///mlflow.db`` when there is none."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    folder = Path(start or Path.cwd()).resolve()
    for candidate in [folder, *folder.parents][: levels + 1]:
        store = candidate / "mlflow.db"
        if store.is_file():
            return f"sqlite:///{store}"
    return "sqlite:///mlflow.db"


def load_sweep_results(
    sweep: str, *, tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT
) -> SweepResults:
    """Load a sweep by name (newest parent of that name in ``experiment``) or parent run id.

    ``tracking_uri`` defaults to ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the
    working directory. Raises :class:`TrackingUnreachableError` when the store is missing or the
    server does not answer, and :class:`SweepNotFoundError` naming the sweep when it is not there.
    """
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    check_readable(uri)
    client = MlflowClient(uri)
    try:
        parent = find_sweep_parent(client, uri, experiment, str(sweep).strip())
    except SweepLookupError as err:
        raise SweepNotFoundError(str(err)) from None
    tags = dict(parent.data.tags)
    objectives = decode_objectives(tags.get(TAG_OBJECTIVES))
    trials = trial_table(
        child_runs(client, parent.info.experiment_id, parent.info.run_id), objectives
    )
    results = SweepResults(
        parent_run_id=parent.info.run_id,
        name=tags.get(TAG_SWEEP) or parent.info.run_name or parent.info.run_id,
        objectives=objectives,
        trials=trials,
        tracking_uri=uri,
        experiment=experiment,
        tags=tags,
        _client=client,
    )
    _fill_best(results)
    return results


def _fill_best(results: SweepResults) -> None:
    """``best/<metric>``: each objective's best value over the trial's whole metric history."""
    table = results.trials
    present = [(m, mode) for m, mode in results.objectives if m in table]
    results._fetch([(run_id, m) for run_id in table["run_id"] for m, _ in present])
    for metric, mode in present:
        best = [
            best_value([v for _, v in results._history[(run_id, metric)]], mode)
            for run_id in table["run_id"]
        ]
        table[f"{BEST_PREFIX}{metric}"] = pd.Series(best, index=table.index, dtype="float64")
