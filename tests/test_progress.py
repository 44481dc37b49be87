"""The live progress line: counts from Tune's own trials (right after a resume too), the last
line printed once, and Tune's silent "waiting for resources" state made visible."""

from __future__ import annotations

import io
import os
import time
from typing import Any

import pytest

# The raylet waits this long for its metrics agent (default 30 s); on a loaded 2-core machine the
# agent starts later and the raylet gives up ("The current node timed out during startup").
os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
from ray.tune.experiment import Trial

from orchestrator.progress import ProgressView


def _trial(status: str, step: int | None = None, cpus: float = 1.0) -> Trial:
    trial = Trial("bitsweep-test", stub=True)
    trial.update_resources({"CPU": cpus})
    trial.set_status(status)
    if step is not None:
        trial.update_last_result({"step": step})
    return trial


def test_counts_include_trials_that_ended_before_a_resume() -> None:
    # a restored Tuner hands back trials that ended before the interruption as TERMINATED/ERROR
    trials = [
        _trial(Trial.TERMINATED, 20),
        _trial(Trial.TERMINATED, 10),
        _trial(Trial.ERROR, 10),
        _trial(Trial.RUNNING, 10),
        _trial(Trial.PENDING),
    ]
    view = ProgressView("val/bpb", "min", 20, stream=io.StringIO())
    view.on_step_end(0, trials)
    line = view.line()
    assert "running 1 | finished 1 | stopped early 1 | failed 1" in line


def test_the_last_line_is_printed_once() -> None:
    stream = io.StringIO()
    view = ProgressView("val/bpb", "min", 20, stream=stream)
    done = _trial(Trial.RUNNING, 20)
    view.on_trial_result(0, [done], done, {"step": 20, "val/bpb": 3.0})
    view.on_trial_complete(0, [done], done)
    done.set_status(Trial.TERMINATED)
    view.on_experiment_end([done])
    lines = [x for x in stream.getvalue().splitlines() if x]
    assert len([x for x in lines if "finished 1" in x]) == 1, lines


@pytest.mark.slow
def test_waiting_for_resources_shows_in_the_line(ray_session: Any) -> None:
    """Real Ray: another actor holds both CPUs, so a pending one-CPU trial cannot start."""
    import ray

    @ray.remote(num_cpus=2)
    class Hog:
        def ping(self) -> int:
            return 1

    hog = Hog.remote()
    ray.get(hog.ping.remote())
    view = ProgressView("val/bpb", "min", 20, stream=io.StringIO())
    view.wait_after_s = 0.0
    pending = [_trial(Trial.PENDING), _trial(Trial.PENDING)]
    try:
        view.on_step_end(0, pending)
        line = view.line()
        assert "2 pending: waiting for resources (a trial needs CPU 1; free: CPU 0)" in line
    finally:
        ray.kill(hog)
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    view.checked = 0.0
    view.on_step_end(0, pending)
    assert "waiting for resources" not in view.line()


@pytest.mark.parametrize(("mode", "best"), [("min", 2.0), ("max", 5.0)])
def test_the_best_value_follows_the_mode_and_names_its_trial(mode: str, best: float) -> None:
    view = ProgressView("val/acc", mode, 20, stream=io.StringIO())
    trials = [_trial(Trial.RUNNING, 0) for _ in range(3)]
    for trial, value in zip(trials, (3.0, 5.0, 2.0), strict=True):
        view.on_trial_result(0, trials, trial, {"step": 5, "val/acc": value})
    view.on_trial_result(0, trials, trials[0], {"step": 6, "val/acc": "n/a"})  # not a number
    winner = trials[(3.0, 5.0, 2.0).index(best)]
    assert (view.best, view.best_trial) == (best, winner.trial_id)
    assert f"best val/acc {best:.4g} ({winner.trial_id})" in view.line()


def test_a_completed_trial_counts_as_finished_only_at_the_last_step() -> None:
    view = ProgressView("val/bpb", "min", 20, stream=io.StringIO())
    done, stopped = _trial(Trial.RUNNING, 20), _trial(Trial.RUNNING, 8)
    view.on_trial_result(0, [done, stopped], done, {"step": 20})
    view.on_trial_result(0, [done, stopped], stopped, {"step": 8})
    view.on_trial_complete(0, [done, stopped], stopped)  # an early stop (ASHA) at step 8
    stopped.set_status(Trial.TERMINATED)  # Tune's list: the ended trial, terminated
    view.on_trial_complete(0, [done, stopped], done)
    assert "finished 1 | stopped early 1" in view.line()


def test_a_log_gets_a_line_per_interval_and_one_per_ended_trial() -> None:
    stream = io.StringIO()
    view = ProgressView("val/bpb", "min", 20, stream=stream, every_s=3600.0)
    trial = _trial(Trial.RUNNING, 0)
    view.on_step_end(0, [trial])  # the first line: no earlier print to wait for
    for step in range(1, 6):
        view.on_trial_result(0, [trial], trial, {"step": step, "val/bpb": 3.0})
    assert len(stream.getvalue().splitlines()) == 1  # throttled within the interval
    view.on_trial_complete(0, [trial], trial)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "stopped early 1" in lines[-1]
    assert all(line.startswith("[bitsweep ") and "\r" not in line for line in lines)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_line_is_redrawn_in_place_and_ended_once() -> None:
    stream = _Terminal()
    view = ProgressView("val/bpb", "min", 20, stream=stream)
    trial = _trial(Trial.RUNNING, 0)
    view.on_trial_result(0, [trial], trial, {"step": 1, "val/bpb": 3.0})
    view.on_trial_result(0, [trial], trial, {"step": 2, "val/bpb": 2.5})
    trial.set_status(Trial.TERMINATED)
    view.on_experiment_end([trial])
    text = stream.getvalue()
    assert text.count("\r\033[K") == 3 and text.endswith("\n") and text.count("\n") == 1


def test_a_failed_trial_gets_its_own_line() -> None:
    stream = io.StringIO()
    view = ProgressView("val/bpb", "min", 20, stream=stream)
    failed = _trial(Trial.RUNNING, 3)
    view.on_trial_error(0, [failed], failed)
    first, *rest = stream.getvalue().splitlines()
    assert first.startswith(f"trial {failed.trial_id} failed:")
    assert rest and "failed 1" in rest[-1]


def test_the_view_pickles_with_tune_s_experiment_state() -> None:
    import pickle
    import sys

    view = ProgressView("val/bpb", "min", 20, stream=io.StringIO())
    trial = _trial(Trial.RUNNING, 0)
    view.on_trial_result(0, [trial], trial, {"step": 4, "val/bpb": 1.5})
    restored = pickle.loads(pickle.dumps(view))  # a StringIO stream does not pickle
    assert restored.stream is sys.stderr
    assert (restored.best, restored.last_step) == (1.5, {trial.trial_id: 4.0})
