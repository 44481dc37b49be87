"""Ray Tune's side of the tracking: the callback that feeds a :class:`SweepTracker`.

Everything is written from the Tune driver process (DESIGN.md): :class:`MLflowTuneCallback`
turns Tune's driver-side hooks into the tracker's ``trial_*`` calls, never touching MLflow from a
worker. :func:`build_trial_table` makes the trial table from Tune's own results when there is
no tracker. :class:`EndedTrialTrimmer` keeps the driver's memory flat over long sweeps.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS, DONE, TRIAL_ID

from trainables.trial_settings import RUN_CONFIG_KEY

from .analysis import Objective
from .run_layout import (
    BEST_PREFIX,
    FAILED,
    FINISHED,
    best_value,
    contract_metrics,
    flatten_config,
)
from .tracking import SweepTracker

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

log = logging.getLogger(__name__)


def exploited_from(trial: Trial) -> str | None:
    """The donor's trial id when the trial restarts from another trial's checkpoint (PBT).

    PBT's exploit hands the target the donor's latest checkpoint result, whose metrics are the
    donor's last result; a trial restored from its own checkpoint carries its own id there.
    """
    restoring = getattr(trial, "latest_checkpoint_result", None)
    donor = getattr(restoring, "metrics", None) or {}
    donor_id = donor.get("trial_id")
    return donor_id if isinstance(donor_id, str) and donor_id != trial.trial_id else None


def trial_params(
    config: Mapping[str, Any], base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The params of a Tune trial config: the trial's dotted run config.

    A config with a ``run_config`` mapping is a bitsweep trial: ``orchestrator.trials`` owns its
    layout (the sweep's ``base`` run config under the sampled values, scenario overrides, the
    scenario label). Any other config is flattened whole.
    """
    if isinstance(config.get(RUN_CONFIG_KEY), Mapping):
        try:
            from .trials import trial_params as bitsweep_trial_params

            return bitsweep_trial_params(dict(config), base)
        except (ImportError, KeyError, TypeError):
            return {**(base or {}), **flatten_config(config[RUN_CONFIG_KEY])}
    return flatten_config(config)


def build_trial_table(
    source: SweepTracker | Iterable[Any], objectives: Sequence[Objective] = ()
) -> pd.DataFrame:
    """The trial table from a tracker (MLflow's child runs) or from Tune results (a ResultGrid).

    From Tune results there is no ``run_id`` and ``status`` is ``failed`` or ``finished``.
    """
    if isinstance(source, SweepTracker):
        return source.trial_table()
    rows = []
    for result in source:
        metrics = dict(result.metrics or {})
        row: dict[str, Any] = {
            "trial_id": metrics.get("trial_id") or Path(str(result.path)).name,
            "run_id": None,
            "status": FAILED if result.error else FINISHED,
            **trial_params(result.config or {}),
            **contract_metrics(metrics),
        }
        history = result.metrics_dataframe
        for name, mode in objectives:
            series = history[name] if history is not None and name in history else pd.Series([])
            values = pd.to_numeric(series, errors="coerce").tolist()
            row[f"{BEST_PREFIX}{name}"] = best_value(values, mode)
        rows.append(row)
    return pd.DataFrame(rows)


def trial_error_reason(trial: Trial) -> tuple[str, str]:
    """(one-line reason, full text) of a failed Tune trial's error.

    Read from the driver's staging copies (``trial.pickled_error_file``, ``trial.error_file``):
    when ``on_trial_error`` runs they are not yet synced to the storage that ``get_error`` reads.
    """
    exc: BaseException | None = None
    full = ""
    try:
        if trial.pickled_error_file and os.path.exists(trial.pickled_error_file):
            from ray import cloudpickle  # Tune wrote it with Ray's cloudpickle

            with open(trial.pickled_error_file, "rb") as f:
                exc = cloudpickle.load(f)
        if trial.error_file and os.path.exists(trial.error_file):
            full = Path(trial.error_file).read_text(errors="replace")
    except Exception as err:  # an unpicklable error must not hide the failure itself
        log.debug("could not read the error of trial %s: %s", trial.trial_id, err)
    if exc is not None:
        cause = getattr(exc, "cause", None) or exc
        first = str(cause).strip().splitlines()
        reason = f"{type(cause).__name__}: {first[0] if first else ''}".rstrip(": ")
    else:
        lines = [line.strip() for line in full.splitlines() if line.strip()]
        reason = lines[-1] if lines else "unknown error"
    return reason, full or reason


class MLflowTuneCallback(Callback):
    """Drives a :class:`SweepTracker` from Tune's driver-side hooks (never from the workers).

    ``strict=False`` (the default) logs MLflow failures during the sweep as warnings instead of
    failing the sweep: an hours-long search should not die for a lost metric. Tests use strict.
    """

    def __init__(
        self,
        tracker: SweepTracker,
        *,
        strict: bool = False,
        params_fn: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.tracker = tracker
        self.strict = strict
        # A module-level function: Tune pickles its callbacks into tuner.pkl.
        self.params_fn = params_fn or trial_params

    def _guard(self, what: str, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as err:
            if self.strict:
                raise
            log.warning("MLflow logging failed (%s); the sweep goes on: %s", what, err)

    def setup(self, **info: Any) -> None:
        """Connect the tracker (a restored Tuner brings an unpickled, unconnected one)."""
        if not self.tracker.started:
            self.tracker.start()

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """Open the trial's child run with its params (and the donor of a PBT exploit)."""
        self._guard(
            "trial start",
            lambda: self.tracker.trial_started(
                trial.trial_id, self.params_fn(trial.config), exploited_from=exploited_from(trial)
            ),
        )

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        """Log the result's contract metrics at its step."""
        self._guard(
            "result",
            lambda: self.tracker.log_result(trial.trial_id, result, self.params_fn(trial.config)),
        )

    def on_checkpoint(
        self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Any, **info: Any
    ) -> None:
        """Remember a checkpoint Tune persisted (one-worker trials report them to Tune)."""
        self._guard(
            "checkpoint",
            lambda: self.tracker.set_checkpoint(
                trial.trial_id, checkpoint.path, checkpoint.filesystem
            ),
        )

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """End the child run as finished or stopped early, uploading the packed model."""
        if not self.tracker.knows(trial.trial_id) and not trial.last_result:
            return  # a pending trial removed at the end of the sweep never ran: no run for it
        self._guard("trial end", lambda: self.tracker.trial_finished(trial.trial_id))

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """End the child run as failed with the error's reason (the traceback as error.txt)."""
        reason, full = trial_error_reason(trial)
        self._guard("trial error", lambda: self.tracker.trial_failed(trial.trial_id, reason, full))


# What is read again of an ended trial's results: Tune's counters (a resumed errored trial
# continues from them, Trainable.restore), its id (exploited_from tells a trial's own checkpoint
# from a donor's by it) and bitsweep's "step" (the progress view; the checkpoint pruner).
KEPT_RESULT_KEYS = frozenset({*AUTO_RESULT_KEYS, TRIAL_ID, DONE, "step"}) - {"config"}


def _kept(result: Mapping[str, Any], names: frozenset[str]) -> dict[str, Any]:
    """``result`` with only ``names`` (and the nested dicts that hold one, as ``a`` of ``a/b``)."""
    return {
        key: value
        for key, value in result.items()
        if key in names or any(name.startswith(f"{key}/") for name in names)
    }


def trim_ended_trial(trial: Trial, metrics: Iterable[str]) -> None:
    """Drop what Tune keeps of an ended trial that nothing reads again (issue 17).

    Tune holds every trial for the whole sweep with its last result (the trial's config again
    and every metric), min/max/avg and last-5/10 windows per numeric metric, the full results of
    its kept checkpoints, and the JSON of all that cached for the experiment state. MLflow holds
    the metrics; here the last result, the statistics and the checkpoints' results keep only
    ``metrics`` (the objectives: ``get_best_trial`` ranks on the statistics, the checkpoint
    manager on its score) and :data:`KEPT_RESULT_KEYS`, what a resume reads. Tune re-serializes
    the trial at its next experiment snapshot, so resume restores the trimmed trial.
    """
    objectives = frozenset(metrics)
    names = KEPT_RESULT_KEYS | objectives
    meta = trial.run_metadata
    meta.last_result = _kept(meta.last_result, names)  # assignment invalidates the JSON cache
    # both tables or neither: Tune's update_metric (a resumed trial) reads the deques of any
    # metric its statistics hold
    for table in (meta.metric_analysis, meta.metric_n_steps):
        for name in [m for m in table if m not in objectives]:
            del table[name]
    manager = meta.checkpoint_manager
    if manager is not None:
        score = manager.checkpoint_config.checkpoint_score_attribute
        scored = (names | {score}) if score else names
        results = [*getattr(manager, "_checkpoint_results", [])]
        results.append(getattr(manager, "_latest_checkpoint_result", None))
        for result in results:
            if result is not None and isinstance(result.metrics, Mapping):
                result.metrics = _kept(result.metrics, scored)
    meta.invalidate_cache()
    # the trial actor's auto-filled metrics, fetched only for a trial that never reported: an
    # ObjectRef held for the whole sweep pins the value in the driver's core worker
    trial._default_result_or_future = None


def forget_encoder_fallbacks() -> int:
    """Drop the keys Tune's state encoder leaves in Ray's ``log_once`` set; returns how many.

    Each experiment snapshot encodes the running trials' metric deques (and other objects JSON
    cannot hold) through a fallback that calls ``log_once(f"tune_func_encode:{obj}")``: a new
    string, kept for good, per deque whose values changed. The key only gates a debug message.
    """
    from ray.util import debug

    logged = getattr(debug, "_logged", None)
    if not isinstance(logged, set):
        return 0
    stale = [key for key in logged if key.startswith("tune_func_encode:")]
    logged.difference_update(stale)
    return len(stale)


class EndedTrialTrimmer(Callback):
    """Trims each trial when it ends (:func:`trim_ended_trial`), so the driver stays flat.

    The last of the sweep's callbacks: the others read the whole last result in the same hook.
    """

    def __init__(self, metrics: Iterable[str]) -> None:
        self.metrics = tuple(metrics)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """Trim a finished (or stopped) trial."""
        trim_ended_trial(trial, self.metrics)
        forget_encoder_fallbacks()

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """Trim a failed trial (resume restarts it from its checkpoint: that is kept)."""
        trim_ended_trial(trial, self.metrics)
        forget_encoder_fallbacks()
