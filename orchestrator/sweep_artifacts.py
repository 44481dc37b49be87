"""The files a sweep leaves on its MLflow parent run: result tables, plots, the best trial.

:func:`write_sweep_artifacts` writes the parent run's result files into a folder the tracker then
logs (``SweepTracker.finish``); :class:`ParentArtifacts` reads them back for
``orchestrator.results``. A trial's own files are ``orchestrator.trial_tracking``'s. Paths are
those of :mod:`orchestrator.run_layout`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .ablation_keys import cell_keys
from .ablation_select import select_values
from .analysis import Objective, ablation_table, matrices_from_table, pareto_front
from .run_layout import (
    ABLATION_DIR,
    BEST_TRIAL_JSON,
    CELLS_SUFFIX,
    PARETO_FRONT,
    SEARCH_SPACE_JSON,
    SWEEP_YAML,
    TABLE_KEYS,
    TRIALS_TABLE,
    completed,
    encode_param,
    is_metric,
    metric_history,
)


@dataclass
class SweepSummary:
    """What ``SweepTracker.finish`` wrote: the tables behind the parent's artifacts."""

    parent_run_id: str
    trial_table: pd.DataFrame
    ablations: dict[str, tuple[pd.DataFrame, pd.DataFrame]]
    pareto_front: pd.DataFrame | None
    best_trial: dict[str, Any] | None
    artifacts: list[str]
    warnings: list[str]

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access; ``best`` and ``pareto`` are short for the fields above."""
        key = {"best": "best_trial", "pareto": "pareto_front"}.get(key, key)
        return getattr(self, key, default)


# ---- tables as files ----------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN as null, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        value = value.tolist() if hasattr(value, "tolist") else value
        return [jsonable(v) for v in value] if isinstance(value, list) else jsonable(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def param_text(value: Any) -> str | None:
    """A table cell as the text MLflow shows for the param (None and NaN stay empty)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    return encode_param(jsonable(value))


def arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` where every column pyarrow cannot type becomes :func:`param_text`.

    A sweep may mix types in one param (``quant.act_signed``: ``"auto"`` or ``true``).
    """
    import pyarrow as pa

    typed = frame.copy()
    for column in typed.columns:
        if pd.api.types.is_object_dtype(typed[column]):
            try:
                pa.array(typed[column], from_pandas=True)
            except (TypeError, ValueError, pa.ArrowException):
                typed[column] = typed[column].map(param_text)
    return typed


# ---- the parent's result artifacts ---------------------------------------------------------------


def _field(spec: Mapping[str, str] | Any, key: str) -> Any:
    return spec.get(key) if isinstance(spec, Mapping) else getattr(spec, key, None)


def _write_frame(df: pd.DataFrame, path: Path, csv: bool = True) -> list[Path]:
    """Parquet (and CSV) of ``df``; columns pyarrow cannot type (mixed values) become text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrow_safe(df).to_parquet(path, index=False)
    written = [path]
    if csv:
        df.to_csv(path.with_suffix(".csv"), index=False)
        written.append(path.with_suffix(".csv"))
    return written


def _trial_summary(row: pd.Series) -> dict[str, Any]:
    params = {k: v for k, v in row.items() if k not in TABLE_KEYS and not is_metric(k)}
    metrics = {k: v for k, v in row.items() if is_metric(k)}
    return jsonable({**{k: row.get(k) for k in TABLE_KEYS}, "params": params, "metrics": metrics})


def _best_trial(
    table: pd.DataFrame, objectives: Sequence[Objective], front: pd.DataFrame | None
) -> dict[str, Any] | None:
    """The best trial per objective (by final value); with several objectives, the front too."""
    best: dict[str, Any] = {"objectives": [list(o) for o in objectives], "best": {}}
    for name, mode in objectives:
        values = pd.to_numeric(table[name], errors="coerce") if name in table else None
        if values is None or values.isna().all():
            continue
        index = values.idxmin() if mode == "min" else values.idxmax()
        best["best"][name] = {"value": float(values[index]), **_trial_summary(table.loc[index])}
    if not best["best"]:
        return None
    if front is not None:
        best["pareto_front"] = [
            {
                "trial_id": r["trial_id"],
                "run_id": r.get("run_id"),
                "values": {name: r[name] for name, _ in objectives},
            }
            for _, r in front.iterrows()
        ]
    return jsonable(best)


def write_sweep_artifacts(
    directory: Path,
    table: pd.DataFrame,
    ablations: Iterable[Mapping[str, str] | Any],
    objectives: Sequence[Objective],
    history: Callable[[str, str], Sequence[tuple[int, float]]] | None = None,
    search_space: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the parent run's result files under ``directory`` (see ``SweepTracker.finish``).

    Ablations take finished trials' values, or with ``at_step`` every trial's value at that step
    (read through ``history(run_id, metric)``; orchestrator.ablation_select). A cell averages
    over training seeds only: ``search_space`` (the sweep's ``search`` block or its ``space``)
    says which other keys stay separate cells and which are marginalized
    (orchestrator.ablation_keys); without it a cell averages over every other key, and the
    heatmap says so. Returns the :class:`SweepSummary` fields other than the parent id and the
    trial table.
    """
    from .plots import ablation_heatmap, pareto_plot

    written = _write_frame(table, directory / TRIALS_TABLE, csv=False)
    warnings: list[str] = []
    matrices: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    for spec in ablations:
        rows, cols, value = (_field(spec, k) for k in ("rows", "cols", "value"))
        name = str(_field(spec, "name") or f"{value}_by_{rows}").replace("/", "_")
        # finished trials only, or all at one step; failed trials keep their cell, not a value
        try:
            valued, label = select_values(
                table, value, at_step=_field(spec, "at_step"), history=history
            )
            keys = cell_keys(search_space, table, rows, cols)
            long = ablation_table(valued, rows, cols, value, keys=keys)
        except ValueError as err:
            warnings.append(f"ablation {name!r} skipped: {err}")
            continue
        mean, std, count = matrices_from_table(long, rows, cols, value)
        matrices[name] = (mean, std)
        # one row per trial (what the matrix aggregates, with every key a cell splits or averages
        # over), then one row per cell (mean/std/count)
        named = (rows, cols, *keys.split, *keys.seeds, *keys.marginalized, value)
        per_trial = [
            c for c in dict.fromkeys(("trial_id", "run_id", "status", *named)) if c in table
        ]
        folder = directory / ABLATION_DIR
        written += _write_frame(valued[per_trial], folder / f"{name}.parquet")
        written += _write_frame(long, folder / f"{name}{CELLS_SUFFIX}")
        written.append(
            ablation_heatmap(
                mean,
                std,
                folder / f"{name}.png",
                title=f"{name}: {label}",
                value=value,
                count=count,
                subtitle=keys.describe(),
            )
        )
    # A failed trial's partial metrics are not a result: keep it out of the front and the best.
    usable = completed(table)
    front = None
    if len(objectives) >= 2:
        try:
            front = pareto_front(usable, objectives)
        except ValueError as err:
            warnings.append(f"Pareto front skipped: {err}")
        else:
            path = directory / PARETO_FRONT
            written += _write_frame(front, path)
            if len(objectives) <= 3:
                written.append(
                    pareto_plot(usable, objectives, path.with_suffix(".png"), front=front)
                )
    best = _best_trial(usable, objectives, front) if objectives else None
    if best is not None:
        (directory / BEST_TRIAL_JSON).write_text(json.dumps(best, indent=2, default=str))
        written.append(directory / BEST_TRIAL_JSON)
    artifacts = [p.relative_to(directory).as_posix() for p in written]
    return {
        "ablations": matrices,
        "pareto_front": front,
        "best_trial": best,
        "artifacts": artifacts,
        "warnings": warnings,
    }


def log_sweep_artifacts(
    client: Any,
    parent_run_id: str,
    table: pd.DataFrame,
    ablations: Iterable[Mapping[str, str] | Any],
    objectives: Sequence[Objective],
    search_space: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`write_sweep_artifacts` into a temporary folder, logged to the parent run; the
    ablations' step values are read from the child runs' metric histories. Without
    ``search_space`` the one the tracker logged on the parent (``search_space.json``) is read."""

    def history(run_id: str, metric: str) -> list[tuple[int, float]]:
        return metric_history(client, run_id, metric)

    if search_space is None:
        search_space = ParentArtifacts(client, parent_run_id).search_space()
    with tempfile.TemporaryDirectory(prefix="bitsweep-sweep-") as tmp:
        summary = write_sweep_artifacts(
            Path(tmp), table, ablations, objectives, history, search_space
        )
        client.log_artifacts(parent_run_id, tmp)
    return summary


# ---- reading the parent's artifacts back (orchestrator.results) ---------------------------------

# Keys of search_space.json (the sweep's ``search`` block) that are not searched keys.
SEARCH_FIELDS = {"algorithm", "num_samples", "metric", "mode", "objectives", "scheduler", "seed"}


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """MLflow draws a progress bar per download; in a report or notebook that is noise."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


@dataclass
class ParentArtifacts:
    """A sweep's parent run's artifacts as the results API reads them; texts cached in
    ``cache`` (path -> text, None where the file is absent)."""

    client: Any
    run_id: str
    cache: dict[str, str | None] = field(default_factory=dict)

    def paths(self, folder: str = "") -> list[str]:
        """The artifact paths in ``folder`` (not recursive)."""
        return [f.path for f in self.client.list_artifacts(self.run_id, folder or None)]

    def download(self, path: str, dst: str | Path) -> Path:
        """Download one artifact (file or folder) into ``dst``; returns the local path."""
        Path(dst).mkdir(parents=True, exist_ok=True)
        with _quiet_downloads():
            return Path(self.client.download_artifacts(self.run_id, path, str(dst)))

    def text(self, path: str) -> str | None:
        """A text artifact's content (None when the run has no such file)."""
        if path not in self.cache:
            folder = path.rsplit("/", 1)[0] if "/" in path else ""
            text = None
            if path in self.paths(folder):
                with tempfile.TemporaryDirectory(prefix="bitsweep-results-") as tmp:
                    text = self.download(path, tmp).read_text()
            self.cache[path] = text
        return self.cache[path]

    def spec(self) -> dict[str, Any] | None:
        """The resolved sweep file (``sweep.yaml``) as a dict, if it was logged."""
        import yaml

        text = self.text(SWEEP_YAML)
        document = yaml.safe_load(text) if text else None
        return document if isinstance(document, dict) else None

    def ablation_specs(self) -> list[dict[str, Any]]:
        """The sweep file's ``ablation`` list: ``name``, ``rows``, ``cols``, ``value`` each."""
        entries = (self.spec() or {}).get("ablation") or []
        specs = []
        for entry in entries:
            if isinstance(entry, Mapping) and entry.get("rows") and entry.get("value"):
                name = entry.get("name") or f"{entry['value']}_by_{entry['rows']}"
                specs.append({"name": str(name), "rows": entry["rows"],
                              "cols": entry.get("cols"), "value": entry["value"],
                              "at_step": entry.get("at_step")})  # fmt: skip
        return specs

    def stored_ablations(self) -> dict[str, pd.DataFrame]:
        """The ``ablation/<name>_cells.parquet`` tables the sweep wrote at its end, by name."""
        paths = [p for p in self.paths(ABLATION_DIR) if p.endswith(CELLS_SUFFIX)]
        tables = {}
        with tempfile.TemporaryDirectory(prefix="bitsweep-results-") as tmp:
            for path in paths:
                name = path.rsplit("/", 1)[-1].removesuffix(CELLS_SUFFIX)
                tables[name] = pd.read_parquet(self.download(path, tmp))
        return tables

    def search_space(self) -> dict[str, Any] | None:
        """The searched keys and their distributions (``{key: {dist: ...}}``) from the sweep's
        ``search_space.json``, else its ``sweep.yaml``; None when neither was logged."""
        text = self.text(SEARCH_SPACE_JSON)
        document: Any = json.loads(text) if text else None
        if document is None:
            document = (self.spec() or {}).get("search")
        if not isinstance(document, Mapping):
            return None
        space = document.get("space")
        if isinstance(space, Mapping):
            return {str(k): v for k, v in space.items()}
        return {str(k): v for k, v in document.items() if k not in SEARCH_FIELDS}

    def searched_keys(self) -> list[str]:
        """The keys the sweep searched (its ``search_space.json``, else its ``sweep.yaml``)."""
        return list(self.search_space() or {})
