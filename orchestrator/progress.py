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
        self.counts = {"running": 0, "finished": 0, "stopped": 0, "failed": 0, "pending": 0}
        self.last_step: dict[str, float] = {}
        self.waiting_since: float | None = None  # pending trials and none running, since
        # trial processes that hold their resources but are still starting look the same for a
        # while (tens of seconds on a busy machine): say "waiting" only after this long
        self.wait_after_s = 60.0
        self.need: dict[str, float] = {}  # what the first pending trial asks for
        self.free: dict[str, float] | None = None  # the cluster's free resources, when short
        self.checked = 0.0
        self.last_text = ""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["stream"] = None  # streams do not pickle; Tune saves callbacks with the experiment
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stderr
        self.started = time.monotonic()

    def _recount(self, trials: list) -> None:
        """Counts from Tune's own trial list: right after a resume too (trials that ended before
        the interruption are TERMINATED/ERROR there, with their last result)."""
        counts = {"running": 0, "finished": 0, "stopped": 0, "failed": 0, "pending": 0}
        self.need = {}
        for t in trials:
            status = getattr(t, "status", "")
            if status == "RUNNING":
                counts["running"] += 1
            elif status == "ERROR":
                counts["failed"] += 1
            elif status == "TERMINATED":
                last = self.last_step.get(t.trial_id)
                if last is None:
                    last = float((getattr(t, "last_result", None) or {}).get("step", 0) or 0)
                counts["finished" if last >= self.total_steps else "stopped"] += 1
            elif status in ("PENDING", "PAUSED"):
                counts["pending"] += 1
                if not self.need:
                    factory = getattr(t, "placement_group_factory", None)
                    self.need = dict(getattr(factory, "required_resources", {}) or {})
        self.counts = counts
        now = time.monotonic()
        if counts["pending"] and not counts["running"]:
            self.waiting_since = self.waiting_since or now
        else:
            self.waiting_since = None

    def waiting_for_resources(self) -> bool:
        """Whether trials have waited, none running, for ``wait_after_s`` while the cluster's
        free resources cannot hold the next one (Tune's silent "pending" state)."""
        since = self.waiting_since
        if since is None or time.monotonic() - since < self.wait_after_s:
            self.free = None
            return False
        if time.monotonic() - self.checked >= 5.0:
            self.checked = time.monotonic()
            self.free = None
            try:
                import ray

                free = ray.available_resources()
            except Exception:  # no Ray connection here: say nothing rather than guess
                return False
            if any(free.get(k, 0.0) < v for k, v in self.need.items() if v):
                self.free = {k: free.get(k, 0.0) for k in self.need}
        return self.free is not None

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._recount(trials)
        self._show(force=False)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._recount(trials)
        self.counts["running"] = max(self.counts["running"], 1)
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
        self._recount([t for t in trials if t is not trial])
        done = self.last_step.get(trial.trial_id, 0) >= self.total_steps
        self.counts["finished" if done else "stopped"] += 1
        self._show(force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._recount([t for t in trials if t is not trial])
        self.counts["failed"] += 1
        if self.stream is not None:  # one line per failed trial (Tune's traceback is filtered)
            from orchestrator.exits import failure_line

            tty = getattr(self.stream, "isatty", lambda: False)()
            self.stream.write(("\r\033[K" if tty else "") + failure_line(trial) + "\n")
        self._show(force=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._recount(trials)
        self._show(force=True, final=True)

    def line(self) -> str:
        """The current status line."""
        elapsed = int(time.monotonic() - self.started)
        return f"[bitsweep {elapsed // 60:d}:{elapsed % 60:02d}] " + self._status()

    def _status(self) -> str:
        c = self.counts
        text = (
            f"running {c['running']} | finished {c['finished']} | stopped early {c['stopped']} | "
            f"failed {c['failed']} | best {self.metric} "
            + ("-" if self.best is None else f"{self.best:.4g} ({self.best_trial})")
        )
        if self.waiting_for_resources():
            need = ", ".join(f"{k} {v:g}" for k, v in self.need.items() if v)
            free = ", ".join(f"{k} {v:g}" for k, v in (self.free or {}).items())
            text += (
                f" | {c['pending']} pending: waiting for resources (a trial needs {need}; "
                f"free: {free})"
            )
        from orchestrator.write_buffer import pending_writes

        behind = pending_writes()
        if behind:  # MLflow is away: say so rather than let the store look complete
            text += f" | tracking behind: {behind} MLflow writes buffered"
        return text

    def _show(self, *, force: bool, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        tty = getattr(self.stream, "isatty", lambda: False)()
        status = self._status()
        if tty:
            end = "\n" if final else ""
            self.stream.write("\r\033[K" + self.line() + end)
        elif final and status == self.last_text:
            return  # the last line is already there: print it once
        elif force or now - self.last_print >= self.every_s:
            self.stream.write(self.line() + "\n")
        else:
            return
        self.last_text = status
        self.stream.flush()
        self.last_print = now
