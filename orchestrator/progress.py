"""A live, one-line progress view of a sweep in the terminal (a Tune callback)."""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from ray.tune import Callback


class ProgressView(Callback):
    """Prints trials running / finished / stopped early / failed, the best so far and the time.

    On a terminal the line is redrawn in place; otherwise (CI logs, files) a line is printed at
    most every ``every_s`` seconds and whenever a trial ends.
    """

    def __init__(
        self,
        metric: str,
        mode: str,
        total_steps: int,
        *,
        stream: IO[str] | None = None,
        every_s: float = 10.0,
    ) -> None:
        self.metric, self.mode, self.total_steps = metric, mode, total_steps
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.started = time.monotonic()
        self.last_print = 0.0
        self.best: float | None = None
        self.best_trial: str | None = None
        self.counts = {"running": 0, "finished": 0, "stopped": 0, "failed": 0}
        self.last_step: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["stream"] = None  # streams do not pickle; Tune saves callbacks with the experiment
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stderr
        self.started = time.monotonic()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.counts["running"] += 1
        self._show(force=False)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self.last_step[trial.trial_id] = float(result.get("step", 0))
        value = result.get(self.metric)
        if isinstance(value, int | float):
            better = self.best is None or (
                value < self.best if self.mode == "min" else value > self.best
            )
            if better:
                self.best, self.best_trial = float(value), trial.trial_id
        self._show(force=False)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.counts["running"] = max(0, self.counts["running"] - 1)
        done = self.last_step.get(trial.trial_id, 0) >= self.total_steps
        self.counts["finished" if done else "stopped"] += 1
        self._show(force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.counts["running"] = max(0, self.counts["running"] - 1)
        self.counts["failed"] += 1
        self._show(force=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._show(force=True, final=True)

    def line(self) -> str:
        """The current status line."""
        elapsed = int(time.monotonic() - self.started)
        best = "-" if self.best is None else f"{self.best:.4g} ({self.best_trial})"
        c = self.counts
        return (
            f"[bitsweep {elapsed // 60:d}:{elapsed % 60:02d}] running {c['running']} | "
            f"finished {c['finished']} | stopped early {c['stopped']} | failed {c['failed']} | "
            f"best {self.metric} {best}"
        )

    def _show(self, *, force: bool, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        tty = getattr(self.stream, "isatty", lambda: False)()
        if tty:
            end = "\n" if final else ""
            self.stream.write("\r\033[K" + self.line() + end)
        elif force or now - self.last_print >= self.every_s:
            self.stream.write(self.line() + "\n")
        else:
            return
        self.stream.flush()
        self.last_print = now
