"""Stop conditions of a whole sweep, as Tune stoppers: a time budget and a metric threshold."""

from __future__ import annotations

import math
from typing import Any

from ray.tune.stopper import CombinedStopper, Stopper, TimeoutStopper


class ThresholdStopper(Stopper):
    """Ends the sweep once any trial's ``metric`` reaches ``threshold`` (``<=`` for min, ``>=``
    for max); that trial ends too, the others are stopped by Tune."""

    def __init__(self, metric: str, mode: str, threshold: float) -> None:
        self.metric, self.mode, self.threshold = metric, mode, float(threshold)
        self.reached: str | None = None  # the trial that reached it

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Whether this trial stops: it reached the threshold."""
        value = result.get(self.metric)
        if not isinstance(value, int | float) or math.isnan(float(value)):
            return False
        hit = value <= self.threshold if self.mode == "min" else value >= self.threshold
        if hit and self.reached is None:
            self.reached = trial_id
        return hit

    def stop_all(self) -> bool:
        """Whether the whole sweep stops."""
        return self.reached is not None


def sweep_stopper(spec: Any) -> Stopper | None:
    """The Tune stopper of ``spec.search`` (``time_budget_s``, ``stop_at``), or None."""
    search = spec.search
    stoppers: list[Stopper] = []
    if search.time_budget_s:
        stoppers.append(TimeoutStopper(search.time_budget_s))
    if search.stop_at is not None:
        first = search.objective_list[0]
        stoppers.append(ThresholdStopper(first.metric, first.mode, search.stop_at))
    if not stoppers:
        return None
    return stoppers[0] if len(stoppers) == 1 else CombinedStopper(*stoppers)
