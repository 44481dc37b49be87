"""Schedulers and sampler options on tiny real sweeps (real local Ray, real Optuna storage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from orchestrator.runner import run_sweep
from orchestrator.spec import SweepSpec, build_sweep
from orchestrator.sweep_folder import experiment_dir

pytestmark = pytest.mark.slow

# Digits MLP trials of 12 steps, evaluated every 3 (4 evaluations each): about a second apiece.
BASE: dict[str, Any] = {
    "task": {"kind": "vision"},
    "data": {"source": "digits"},
    "model": {"arch": "mlp", "hidden": [32]},
    "quant": {"scheme": "none"},
    "train": {"steps": 12, "batch_size": 32, "eval_every": 3, "threads": 1},
    "resources": {"cpus_per_worker": 1},
}


def _spec(tmp_path: Path, name: str, search: dict[str, Any], **sections: Any) -> SweepSpec:
    document = {
        **BASE,
        **sections,
        "search": search,
        "storage": {"path": str(tmp_path / "results")},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": name},
    }
    return build_sweep(document, name=name)


def _study(spec: SweepSpec) -> optuna.Study:
    storage = f"sqlite:///{Path(experiment_dir(spec)) / 'optuna.db'}"
    return optuna.load_study(study_name=spec.sweep_id or spec.name, storage=storage)


LR_SPACE = {"train.lr": {"dist": "loguniform", "low": 1e-4, "high": 0.3}}


def test_asha_stopped_trials_reach_optuna_as_pruned(ray_session: Any, tmp_path: Path) -> None:
    search = {
        "algorithm": "optuna", "num_samples": 8, "metric": "val/loss", "mode": "min",
        "space": LR_SPACE, "scheduler": {"type": "asha", "grace_period": 1},
        "sampler": {"n_startup_trials": 3},
    }  # fmt: skip
    spec = _spec(tmp_path, "asha-pruned", search)
    outcome = run_sweep(spec, stream=None)
    spec = spec.model_copy(update={"sweep_id": outcome.sweep_id})
    trials = _study(spec).trials
    states = [t.state for t in trials]
    assert states.count(TrialState.PRUNED) >= 1, states
    assert states.count(TrialState.COMPLETE) >= 1, states
    for trial in trials:
        steps = sorted(trial.intermediate_values)
        assert steps and all(s in (3, 6, 9, 12) for s in steps)  # reported at the loop's step
        if trial.state == TrialState.PRUNED:
            assert max(steps) < 12  # stopped early, with its history up to there
        else:
            assert max(steps) == 12
    stopped = outcome.trials[outcome.trials["status"] == "stopped_early"]
    assert len(stopped) == states.count(TrialState.PRUNED)


@pytest.mark.parametrize("kind", ["optuna-sh", "optuna-hyperband"])
def test_optuna_pruners_stop_trials_through_the_study(
    ray_session: Any, tmp_path: Path, kind: str
) -> None:
    search = {
        "algorithm": "optuna", "num_samples": 8, "metric": "val/loss", "mode": "min",
        "space": LR_SPACE, "scheduler": {"type": kind, "grace_period": 1},
        "sampler": {"n_startup_trials": 4, "constant_liar": False, "multivariate": False},
        "seed": 3,
    }  # fmt: skip
    spec = _spec(tmp_path, kind, search)
    outcome = run_sweep(spec, stream=None)
    spec = spec.model_copy(update={"sweep_id": outcome.sweep_id})
    study = _study(spec)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, [t.state for t in study.trials]
    # the pruner's own bookkeeping is on the trials it judged: it decided, not Tune's ASHA
    judged = [
        t for t in study.trials if any(k.startswith("completed_rung") for k in t.system_attrs)
    ]
    assert judged
    assert (outcome.trials["status"] == "stopped_early").sum() == len(pruned)


def test_several_objectives_use_the_pareto_rank_scheduler(ray_session: Any, tmp_path: Path) -> None:
    search = {
        "algorithm": "optuna", "num_samples": 8,
        "objectives": [{"metric": "val/acc", "mode": "max"},
                       {"metric": "model/bits_total", "mode": "min"}],
        "space": {**LR_SPACE, "quant.weight_bits": {"dist": "choice", "values": [2, 4, 8]}},
        "scheduler": {"type": "asha", "grace_period": 1},
    }  # fmt: skip
    spec = _spec(tmp_path, "mo-asha", search, quant={"scheme": "lsq", "first_last": "same"})
    from orchestrator.runner import _scheduler
    from orchestrator.schedulers import ParetoASHA

    assert isinstance(_scheduler(spec, None), ParetoASHA)
    outcome = run_sweep(spec, stream=None)
    statuses = outcome.trials["status"].tolist()
    assert "stopped_early" in statuses and "finished" in statuses, statuses
    assert outcome.pareto is not None and len(outcome.pareto) >= 1


def test_mixed_precision_searches_one_dimension_per_layer_under_a_budget(
    ray_session: Any, tmp_path: Path
) -> None:
    from orchestrator.mixed_precision import CONSTRAINT_NAME, LayerBits

    search = {
        "algorithm": "optuna", "num_samples": 5,
        "objectives": [{"metric": "val/acc", "mode": "max"},
                       {"metric": "model/bits_total", "mode": "min"}],
        "space": {"quant.layer_bits": {"dist": "per_layer", "values": [2, 4, 8]}},
        "bits_budget": 20000,
    }  # fmt: skip
    quant = {"scheme": "lsq", "first_last": "same", "act_bits": 8}
    spec = _spec(tmp_path, "mixed", search, quant=quant, model={"arch": "mlp", "hidden": [32, 32]})
    layers = LayerBits(spec.run)
    assert layers.names == ["layers.0", "layers.1"]
    outcome = run_sweep(spec, stream=None)
    spec = spec.model_copy(update={"sweep_id": outcome.sweep_id})
    study = _study(spec)
    assert len(study.trials) == 5
    for trial in study.trials:
        bits = {name.rsplit("/", 1)[-1]: v for name, v in trial.params.items()}
        assert set(bits) == set(layers.names)
        over = trial.constraints[CONSTRAINT_NAME]  # what Optuna's constrained TPE reads
        assert over == pytest.approx(layers.bits_total(bits) - 20000)
    reported = outcome.trials["model/bits_total"].astype(float).tolist()
    expected = [
        layers.bits_total({n.rsplit("/", 1)[-1]: v for n, v in t.params.items()})
        for t in study.trials
    ]
    assert sorted(reported) == pytest.approx(sorted(expected))


def test_pbt_exploited_trial_continues_from_the_donor_with_new_values(
    ray_session: Any, tmp_path: Path
) -> None:
    import json

    from mlflow import MlflowClient

    search = {
        "algorithm": "random", "num_samples": 1, "metric": "val/loss", "mode": "min",
        "space": {"train.lr": {"dist": "grid", "values": [0.0001, 0.0003, 0.01, 0.03]}},
        "scheduler": {"type": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.25,
                      "resample_probability": 0.0, "mutations": ["train.lr"]},
    }  # fmt: skip
    spec = _spec(
        tmp_path, "pbt", search,
        # the population runs side by side (PBT only compares running trials): 4 on 2 cores
        resources={"cpus_per_worker": 0.5},
        train={**BASE["train"], "steps": 120, "eval_every": 6},
        schedule={"lr_schedule": "constant"},
    )  # fmt: skip
    outcome = run_sweep(spec, stream=None)
    folder = Path(experiment_dir(spec.model_copy(update={"sweep_id": outcome.sweep_id})))
    exploits = [json.loads(line) for line in (folder / "pbt_global.txt").read_text().splitlines()]
    assert exploits, "no trial was exploited"
    target_tag, donor_tag, target_iteration, donor_iteration, _, new_config = exploits[0]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pbt")
    runs = {
        r.data.tags["bitsweep.trial_id"]: r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("bitsweep.role") == "trial"
    }
    assert len(runs) == 4
    by_index = {int(tid.rsplit("_", 1)[-1]): run for tid, run in runs.items()}
    target = by_index[int(target_tag.split("_", 1)[0])]
    donor = by_index[int(donor_tag.split("_", 1)[0])]
    latest_donor = [row[1] for row in exploits if row[0] == target_tag][-1]  # the run's tag
    latest = by_index[int(latest_donor.split("_", 1)[0])].data.tags["bitsweep.trial_id"]
    assert target.data.tags["bitsweep.exploited_from"] == latest

    def history(run: Any, key: str) -> list[tuple[int, float, int]]:
        """(step, value, timestamp) in the order logged."""
        entries = client.get_metric_history(run.info.run_id, key)
        return [(m.step, m.value, m.timestamp) for m in sorted(entries, key=lambda m: m.timestamp)]

    losses, lrs = history(target, "val/loss"), history(target, "train/lr")
    donor_losses = {step: value for step, value, _ in history(donor, "val/loss")}
    assert max(step for step, _, _ in losses) == 120  # ran to the end
    # the target's own lineage ends at its step when exploited (a result already in flight may
    # follow); its next result continues from the donor's checkpoint at the donor's iteration:
    # one evaluation after the donor's step there, with the new value (nothing retrained,
    # nothing skipped), logged even when the target had been ahead of the donor
    steps = [step for step, _, _ in losses]
    own_end = steps.index(target_iteration * 6)
    # the old lineage's results in flight come first, and one of them can have the same step
    # as the new lineage's first (a target one evaluation behind its donor): the last one is it
    window = range(own_end + 1, min(own_end + 4, len(steps)))
    firsts = [i for i in window if steps[i] == donor_iteration * 6 + 6]
    assert firsts, steps  # only results already in flight between
    resumed = firsts[-1]
    own_before, resumed_loss, resumed_at = losses[own_end][1], *losses[resumed][1:]
    lr_at_resume = [v for step, v, t in lrs if t == resumed_at]
    assert lr_at_resume == [pytest.approx(new_config["run_config"]["train.lr"])]
    donor_at = donor_losses[donor_iteration * 6]
    assert abs(resumed_loss - donor_at) <= abs(resumed_loss - own_before)


def _interrupt_then_resume(tmp_path: Path, sweep_file: Path, name: str, expected: int) -> None:
    """``bitsweep run`` in its own process, SIGINT mid-trial, then ``resume``.

    The interrupt comes once the first trial has logged an evaluation (so it has a checkpoint)
    and before it can finish: waiting for a finished trial instead raced the scheduler, which
    can end every other trial within a second of the first one finishing.
    """
    import os
    import signal
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "orchestrator.cli"]
    proc = subprocess.Popen(
        [*command, "run", str(sweep_file)], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    client = MlflowClient(uri)

    def trial_runs() -> list[Any]:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id])
        return [r for r in runs if r.data.tags.get("bitsweep.role") == "trial"]

    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if any(r.data.metrics.get("val/loss") is not None for r in trial_runs()):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, output
    assert len([r for r in trial_runs() if r.data.tags["bitsweep.status"] == "finished"]) < expected
    done = subprocess.run(
        [*command, "resume", name, "--storage", str(tmp_path / "results")], cwd=tmp_path,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    runs = trial_runs()
    assert len(runs) == expected
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
        assert len(steps) == len(set(steps)), steps  # no step logged twice


def _sweep_file(tmp_path: Path, name: str, search: dict[str, Any], **sections: Any) -> Path:
    import yaml

    document = {
        **BASE, **sections, "name": name, "search": search,
        "resources": {"cpus_per_worker": 1, "max_concurrent_trials": 1},
        "storage": {"path": str(tmp_path / "results")},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": name},
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_interrupted_multi_objective_sweep_resumes(tmp_path: Path) -> None:
    search = {
        # four trials of 60 steps: the interrupt lands in the first one, which ASHA cannot stop
        "algorithm": "optuna", "num_samples": 4,
        "objectives": [{"metric": "val/acc", "mode": "max"},
                       {"metric": "model/bits_total", "mode": "min"}],
        "space": {"quant.weight_bits": {"dist": "choice", "values": [2, 4, 8]}},
        "scheduler": {"type": "asha", "grace_period": 1},
    }  # fmt: skip
    path = _sweep_file(
        tmp_path, "mo-resume", search, quant={"scheme": "lsq", "first_last": "same"},
        train={**BASE["train"], "steps": 60},
    )  # fmt: skip
    _interrupt_then_resume(tmp_path, path, "mo-resume", expected=4)


def test_interrupted_pbt_sweep_resumes(tmp_path: Path) -> None:
    search = {
        "algorithm": "random", "num_samples": 1, "metric": "val/loss", "mode": "min",
        "space": {"train.lr": {"dist": "grid", "values": [0.0001, 0.01, 0.03]}},
        "scheduler": {"type": "pbt", "perturbation_interval": 2, "mutations": ["train.lr"]},
    }  # fmt: skip
    path = _sweep_file(tmp_path, "pbt-resume", search, train={**BASE["train"], "steps": 60})
    _interrupt_then_resume(tmp_path, path, "pbt-resume", expected=3)
