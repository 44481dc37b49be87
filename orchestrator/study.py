"""The Optuna study as a person reads it (optuna-dashboard, ``optuna.load_study``).

Ray's ``OptunaSearch`` names parameters by Tune's config path (``run_config/train.lr``) and leaves
the objectives unnamed ("Objective 0"). :class:`ReadableStudy`, mixed in before ``OptunaSearch``
(``class StudySearch(ReadableStudy, ReconcilingOptunaSearch)``), keeps the sampling and adds: the
sweep's dotted keys as parameter names, the metrics as the study's objective names, and the user
attributes ``tune_trial_id`` and ``mlflow_run_id`` per trial. Early-stopped
trials are told PRUNED by ``orchestrator.search.StudySearch``.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

from trainables.trial_settings import RUN_CONFIG_KEY

PREFIX = RUN_CONFIG_KEY + "/"
# trial id -> MLflow run id, filled by the tracker in this (the Tune driver's) process
RUN_IDS: dict[str, str] = {}
# the searchers of this process, so the tracker can link a trial the moment its run exists
_ACTIVE: weakref.WeakSet[Any] = weakref.WeakSet()


def link_run(trial_id: str, run_id: str) -> None:
    """Record ``trial_id``'s MLflow run and store it on its Optuna trial (user attribute
    ``mlflow_run_id``) while that trial is still running (Optuna freezes finished trials).

    Kept only while a study searcher runs in this process (a random or grid search has no study
    to link, and would only grow the table); the searcher drops the link once it tells the trial.
    """
    if not _ACTIVE:
        return
    RUN_IDS[trial_id] = run_id
    for searcher in list(_ACTIVE):
        with contextlib.suppress(Exception):  # a study that refuses must not stop the sweep
            searcher._link(trial_id)


def forget_run(trial_id: str) -> None:
    """Drop ``trial_id``'s link once its Optuna trial is finished (it can no longer change)."""
    RUN_IDS.pop(trial_id, None)


class ReadableStudy:
    """Mixin for ``OptunaSearch`` subclasses: readable names and links (see the module doc)."""

    _space: Any
    _metric: Any
    _ot_study: Any
    _ot_trials: dict[str, Any]
    _completed_trials: set[str]

    def _renamed_keys(self) -> set[str]:
        if not hasattr(self, "_readable_renamed"):
            self._readable_renamed: set[str] = set()
        return self._readable_renamed

    def _setup_study(self, mode: Any) -> None:
        """Rename ``run_config/<key>`` dimensions to ``<key>``, then name the objectives."""
        if isinstance(self._space, dict):
            renamed = self._renamed_keys()
            space = {}
            for name, dist in self._space.items():
                if name.startswith(PREFIX):
                    name = name.removeprefix(PREFIX)
                    renamed.add(name.split("/", 1)[0])
                space[name] = dist
            self._space = space
        super()._setup_study(mode)  # type: ignore[misc]
        _ACTIVE.add(self)
        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        if all(isinstance(m, str) for m in metrics):
            import warnings

            import optuna

            with warnings.catch_warnings():  # experimental since 3.2, stable in use: not news
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names(list(metrics))

    def suggest(self, trial_id: str) -> dict | None:
        """Tune's nested config from the study's dotted parameters."""
        config = super().suggest(trial_id)  # type: ignore[misc]
        _ACTIVE.add(self)  # a restored searcher skips _setup_study
        renamed = self._renamed_keys()
        if config is None or not renamed:
            return config
        run = {k: v for k, v in config.items() if k in renamed}
        rest = {k: v for k, v in config.items() if k not in renamed}
        self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
        return {**rest, RUN_CONFIG_KEY: run} if run else rest

    def _link(self, trial_id: str) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or trial_id not in RUN_IDS:
            return
        if ot_trial.user_attrs.get("mlflow_run_id") != RUN_IDS[trial_id]:
            ot_trial.set_user_attr("mlflow_run_id", RUN_IDS[trial_id])

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Link the Optuna trial to its MLflow run once it has one."""
        self._link(trial_id)
        super().on_trial_result(trial_id, result)  # type: ignore[misc]

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Record the MLflow run before the study is told how the trial ended."""
        self._link(trial_id)
        super().on_trial_complete(trial_id, result, error)  # type: ignore[misc]
