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
