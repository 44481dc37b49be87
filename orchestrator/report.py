"""``bitsweep report NAME|PARENT_RUN_ID``: a sweep's results as text, and its plots as PNG files.

Prints the trial summary, each ablation matrix of the sweep file as ``mean ± std (n=)`` text (a
cell averages over training seeds; the line under the matrix's title says over which keys, which
searched keys split its rows and which sampled keys it marginalizes), the Pareto front of a
multi-objective sweep and the best trial, then writes the plots (ablation heatmaps, Pareto front,
learning curves, and where the metrics exist learned bit-widths, exit layers and growth events)
into the output folder and prints their paths. Everything is read through
:mod:`orchestrator.results`, so it works on a local store and an MLflow server alike.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from . import plots
from .ablation_keys import CellKeys, stored_cell_keys
from .analysis import STATS, matrices_from_table
from .errors import UserError
from .results import SweepResults, load_sweep_results
from .run_layout import BEST_PREFIX, FAILED, TAG_STATUS

MAX_ROWS = 30  # trial rows printed; the full table is in MLflow and SweepResults.trials
MAX_FAILED = 10


class ReportError(UserError):
    """The report cannot be written (an output folder that cannot be created)."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def format_matrix(mean: pd.DataFrame, std: pd.DataFrame, count: pd.DataFrame | None) -> str:
    """An ablation matrix as text, each cell ``mean ± std (n=k)``; empty cells as ``-``."""
    cells = pd.DataFrame(index=mean.index, columns=mean.columns, dtype=object)
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            m, s = float(mean.iat[i, j]), float(std.iat[i, j])
            if math.isnan(m):
                cells.iat[i, j] = "-"
                continue
            text = _fmt(m) if math.isnan(s) else f"{_fmt(m)} ± {_fmt(s)}"
            if count is not None:
                text += f" (n={int(count.iat[i, j])})"
            cells.iat[i, j] = text
    return cells.to_string()


def _frame_text(frame: pd.DataFrame) -> str:
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "sweep"


class _Report:
    """One report run: what it prints and the files it writes."""

    def __init__(self, results: SweepResults, out_dir: Path, stream: TextIO) -> None:
        self.results = results
        self.out_dir = out_dir
        self.stream = stream
        self.prefix = _safe(results.name)
        self.written: list[Path] = []
        self.skipped: list[str] = []

    def say(self, text: str = "") -> None:
        print(text, file=self.stream)

    def plot(self, kind: str, draw: Callable[[Path], Any]) -> None:
        """Write one PNG; a plot that cannot be drawn is reported, not fatal."""
        path = self.out_dir / f"{self.prefix}_{kind}.png"
        try:
            draw(path)
        except ValueError as err:
            self.skipped.append(f"{kind}: {err}")
            return
        self.written.append(path)

    def header(self) -> None:
        r = self.results
        counts = r.trials["status"].value_counts().to_dict() if len(r.trials) else {}
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
        objectives = ", ".join(f"{m} ({mode})" for m, mode in r.objectives) or "none"
        self.say(f"sweep {r.name}: parent run {r.parent_run_id}")
        self.say(f"tracking {r.tracking_uri}, experiment {r.experiment!r}")
        self.say(f"status {r.tags.get(TAG_STATUS, '?')}; {len(r.trials)} trials: {statuses}")
        self.say(f"objectives: {objectives}")

    def trials(self) -> None:
        summary = self.results.summary()
        self.say()
        if summary.empty:
            self.say("no trials")
            return
        self.say("trials (best first):" if self.results.objectives else "trials:")
        self.say(_frame_text(summary.drop(columns=["run_id"]).head(MAX_ROWS)))
        if len(summary) > MAX_ROWS:
            self.say(f"... and {len(summary) - MAX_ROWS} more")
        failed = self.results.trials[self.results.trials["status"] == FAILED]
        if len(failed):
            self.say(f"failed trials ({len(failed)}):")
            for _, row in failed.head(MAX_FAILED).iterrows():
                self.say(f"  {row['trial_id']}: {row['error'] or 'unknown error'}")

    def ablations(self) -> None:
        r = self.results
        specs = r.ablation_specs()
        if specs:
            for spec in specs:
                name, rows, cols, value = (spec[k] for k in ("name", "rows", "cols", "value"))
                at_step = spec.get("at_step")
                try:
                    cells = r.ablation_cells(rows, cols, value, at_step=at_step)
                    label = r.ablation_selection(value, at_step)[1]
                except ValueError as err:
                    self.say(f"\nablation {name}: skipped ({err})")
                    continue
                self._matrix(name, cells, rows, cols, value, label)
            return
        # No sweep.yaml (an older or hand-made parent): the matrices the sweep stored, if any.
        for name, cells in r.stored_ablations().items():
            stored = stored_cell_keys(cells)
            if stored is not None:
                rows, cols, _ = stored
                self._matrix(name, cells, rows, cols, cells.attrs["ablation"].get("value", "value"))
                continue
            # a file from before the cells recorded their keys: the key columns are rows, cols
            keys = [c for c in cells.columns if c not in STATS]
            if 1 <= len(keys) <= 2:
                self._matrix(name, cells, keys[0], keys[1] if len(keys) == 2 else None, "value")

    def _matrix(
        self,
        name: str,
        cells: pd.DataFrame,
        rows: str,
        cols: str | None,
        value: str,
        label: str = "as stored",
    ) -> None:
        mean, std, count = matrices_from_table(cells, rows, cols, value)
        stored = stored_cell_keys(cells)
        keys = stored[2] if stored is not None else CellKeys(known=False)
        by = f"{rows} x {cols}" if cols else rows
        self.say(f"\nablation {name}: {value} by {by} ({label})")
        self.say(f"each cell: {keys.describe()}")
        self.say(format_matrix(mean, std, count))
        title = f"{name}: {value}\n{label}"
        self.plot(
            f"ablation_{_safe(name)}",
            lambda p: plots.ablation_heatmap(
                mean, std, p, title=title, value=value, count=count, subtitle=keys.describe()
            ),
        )

    def pareto(self) -> None:
        r = self.results
        if len(r.objectives) < 2:
            return
        try:
            front = r.pareto()
        except ValueError as err:
            self.say(f"\nPareto front: skipped ({err})")
            return
        metrics = [m for m, _ in r.objectives]
        columns = ["trial_id", *metrics, *[k for k in r.searched_keys() if k not in metrics]]
        self.say(f"\nPareto front ({len(front)} of {len(r.completed_trials())} completed trials):")
        self.say(_frame_text(front[[c for c in columns if c in front]]))
        if len(r.objectives) <= 3 and len(front):
            table = r.completed_trials()
            self.plot("pareto", lambda p: plots.pareto_figure(table, r.objectives, p, front=front))

    def best(self) -> None:
        r = self.results
        for metric, _ in r.objectives:
            try:
                row = r.best(metric)
            except ValueError:
                continue
            self.say(f"\nbest {metric}: {_fmt(float(row[metric]))} "
                     f"(trial {row['trial_id']}, run {row['run_id']})")  # fmt: skip
            best_seen = row.get(f"{BEST_PREFIX}{metric}")
            if best_seen is not None and not pd.isna(best_seen):
                self.say(f"  best over its history: {_fmt(float(best_seen))}")
            for key in r.searched_keys():
                if key in row:
                    self.say(f"  {key} = {row[key]}")

    def importance(self) -> None:
        """fANOVA importance of the searched keys and the parallel-coordinates plot."""
        from . import importance

        r = self.results
        keys = [k for k in r.searched_keys() if k in r.trials]
        if not r.objectives or not keys:
            return
        metric, mode = r.objectives[0]
        space = ((r.spec() or {}).get("search") or {}).get("space") or {}
        try:
            scores = importance.parameter_importance(r.trials, keys, metric, mode, space)
        except ValueError as err:
            self.say(f"\nparameter importance: skipped ({err})")
        else:
            self.say(f"\nparameter importance for {metric} (fANOVA over finished trials):")
            for key, value in scores.items():
                self.say(f"  {key:<40} {value:.3f}")
            self.plot("importance", lambda p: importance.importance_plot(scores, p))
        if metric in r.trials:
            self.plot(
                "parallel_coordinates",
                lambda p: importance.parallel_coordinates(r.trials, keys, metric, p, mode=mode),
            )

    def figures(self) -> None:
        r = self.results
        table = r.trials
        labels = r.trial_labels()
        curves = [m for m, _ in r.objectives if m in r.metrics] or [
            m for m in ("val/loss",) if m in r.metrics
        ]
        if curves and len(table):
            history = r.history(curves)
            self.plot(
                "learning_curves",
                lambda p: plots.learning_curves(history, p, metrics=curves, labels=labels),
            )
        if plots.prefixed_columns(table, plots.BITS_PREFIX):
            self.plot("bit_widths", lambda p: plots.bit_widths_plot(table, p, labels=labels))
        if plots.prefixed_columns(table, plots.EXIT_PREFIX):
            self.plot(
                "exit_layers", lambda p: plots.exit_distribution_plot(table, p, labels=labels)
            )
        grew = "growth/stage" in table and (pd.to_numeric(table["growth/stage"]) > 0).any()
        if grew and "val/loss" in r.metrics:
            history = r.history(["val/loss", "growth/stage"])
            self.plot("growth", lambda p: plots.growth_timeline(history, p, labels=labels))
        self.say()
        self.say(f"plots ({len(self.written)}):" if self.written else "no plots written")
        for path in self.written:
            self.say(f"  {path}")
        for reason in self.skipped:
            self.say(f"  skipped {reason}")


def print_report(
    sweep: str,
    *,
    tracking_uri: str | None = None,
    experiment: str = "bitsweep",
    out_dir: str | Path = ".",
    stream: TextIO | None = None,
) -> int:
    """Print sweep ``sweep``'s (a name or parent run id) report and write its plots into
    ``out_dir``; returns the exit code 0.

    Raises :class:`~orchestrator.results.SweepNotFoundError` for an unknown sweep,
    ``TrackingUnreachableError`` for a store that is missing or a server that does not answer,
    and :class:`ReportError` when ``out_dir`` cannot be created (the CLI exits 2 on each).
    """
    results = load_sweep_results(sweep, tracking_uri=tracking_uri, experiment=experiment)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReportError(f"cannot write the plots to {out}: {err.strerror or err}") from None
    report = _Report(results, out, stream or sys.stdout)
    report.header()
    report.trials()
    report.ablations()
    report.pareto()
    report.best()
    report.importance()
    report.figures()
    return 0
