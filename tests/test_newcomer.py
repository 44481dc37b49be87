"""What a newcomer meets (issue 16), through the real ``bitsweep`` command on real local Ray and a
real MLflow store: sweep identity, the MLflow and Optuna presentation, honest ablation tables,
stop conditions, the resource check, and the README's quick start run literally."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

# The raylet waits this long for its metrics agent (default 30 s); on a loaded 2-core machine the
# agent starts later and the raylet gives up ("The current node timed out during startup").
os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ADDRESS: list[str] = []  # the Ray the CLI runs attach to (filled by the autouse fixture)
SESSION_DIR: list[str] = []  # and its session folder (its raylet's command line names it)
TINY = ["model.d_model=32", "model.n_heads=2", "model.seq_len=32", "train.batch_size=8",
        "data.eval_batches=1", "train.steps=20", "train.eval_every=10",
        "search.num_samples=2"]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _cli(cwd: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    if args[0] == "run" and ADDRESS:  # the session's Ray: one start instead of one per sweep
        args = (*args, "--address", ADDRESS[0])
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        capture_output=True, text=True, cwd=cwd, env=_env(), timeout=timeout,
    )  # fmt: skip


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _client(cwd: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")


@pytest.fixture(autouse=True, scope="module")
def _session_ray(ray_session: Any) -> Any:
    """Sweeps attach to the test session's Ray (2 CPUs): starting a Ray per sweep times out on a
    busy 2-core machine. The README test starts its own, as a user's `make demo` does."""
    ADDRESS[:] = [ray_session.address_info["address"]]
    SESSION_DIR[:] = [ray_session.address_info["session_dir"]]
    yield
    ADDRESS.clear()
    SESSION_DIR.clear()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`bitsweep run demo` twice under one name with other settings: two sweeps."""
    cwd = tmp_path_factory.mktemp("two-runs")
    first = _ok(_cli(cwd, "run", "demo", *TINY, "--name", "twice"))
    second = _ok(_cli(cwd, "run", "--name", "twice", "demo", *TINY, "train.lr=0.005"))
    ids = [re.search(r"^sweep (twice-[0-9a-f]{6}):", out, re.M).group(1) for out in (first, second)]
    return {"cwd": cwd, "ids": ids, "outputs": [first, second]}


def test_each_run_is_a_new_sweep_with_its_own_folder_study_and_parent(two_runs: dict) -> None:
    import optuna

    cwd, ids = two_runs["cwd"], two_runs["ids"]
    assert ids[0] != ids[1]
    for sweep_id in ids:
        folder = cwd / "bitsweep_results" / sweep_id
        saved = yaml.safe_load((folder / "bitsweep_sweep.yaml").read_text())
        assert saved["sweep_id"] == sweep_id and saved["name"] == "twice"
        study = optuna.load_study(study_name=sweep_id, storage=f"sqlite:///{folder / 'optuna.db'}")
        assert len(study.trials) == 2  # its own study: TPE never sees the other sweep's trials
    client = _client(cwd)
    experiment = client.get_experiment_by_name("bitsweep")
    parents = client.search_runs([experiment.experiment_id], "tags.`bitsweep.role` = 'sweep'")
    assert sorted(p.info.run_name for p in parents) == sorted(ids)
    assert {p.data.tags["bitsweep.sweep"] for p in parents} == {"twice"}
    listed = _ok(_cli(cwd, "list"))
    for sweep_id in ids:
        assert sweep_id in listed
    assert "val/bpb" in listed and "finished" in listed
    # continuing is explicit, and keeps the saved settings
    refused = _cli(cwd, "run", "demo", *TINY, "train.steps=30", "--continue", ids[0])
    assert refused.returncode == 2 and "train.steps" in refused.stderr


def test_the_printed_commands_run_as_printed(two_runs: dict) -> None:
    out = two_runs["outputs"][1]
    line = next(x for x in out.splitlines() if x.startswith("open the UI with: "))
    command = line.removeprefix("open the UI with: ").split()
    assert Path(command[0]).name == "mlflow" and command[1:3] == ["ui", "--backend-store-uri"]
    # the program as printed runs from where the sweep ran, with the shell's own PATH
    version = subprocess.run([command[0], "--version"], cwd=two_runs["cwd"], env=_env(),
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert version.returncode == 0 and "mlflow" in version.stdout.lower()
    assert "2 trials: " in out and "stopped early" in out


def test_mlflow_ui_presentation(two_runs: dict) -> None:
    client = _client(two_runs["cwd"])
    experiment = client.get_experiment_by_name("bitsweep")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = client.search_runs(
        [experiment.experiment_id], f"tags.`bitsweep.sweep_id` = '{two_runs['ids'][0]}'"
    )[0]
    metrics = parent.data.metrics
    assert metrics["sweep/trials"] == 2
    assert metrics["sweep/finished"] + metrics["sweep/stopped_early"] == 2
    assert "best/val/bpb" in metrics and "2 trials" in parent.data.tags["mlflow.note.content"]
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 2
    for child in children:
        name = child.info.run_name
        assert child.data.params["quant.scheme"] in name  # named by its searched values
        assert re.search(r"\blr=\d", name) and "warmup_frac=" in name
        bits = child.data.metrics
        assert 0 < bits["model/quant_bits_per_weight"] < 2.5 < bits["model/bits_per_weight"]


def test_optuna_study_presentation(two_runs: dict) -> None:
    import optuna

    cwd, sweep_id = two_runs["cwd"], two_runs["ids"][0]
    storage = f"sqlite:///{cwd / 'bitsweep_results' / sweep_id / 'optuna.db'}"
    study = optuna.load_study(study_name=sweep_id, storage=storage)
    assert study.metric_names == ["val/bpb"]
    client = _client(cwd)
    runs = {r.info.run_id for r in client.search_runs(
        [client.get_experiment_by_name("bitsweep").experiment_id],
        "tags.`bitsweep.sweep` = 'twice' and tags.`bitsweep.role` = 'trial'")}  # fmt: skip
    for trial in study.trials:
        assert set(trial.params) == {"train.lr", "quant.scheme", "schedule.lambda_warmup_frac"}
        assert trial.user_attrs["mlflow_run_id"] in runs


def test_best_export_writes_a_runnable_sweep_and_report_explains(two_runs: dict) -> None:
    cwd, sweep_id = two_runs["cwd"], two_runs["ids"][1]
    out = _ok(_cli(cwd, "best", sweep_id, "--export", "best.yaml"))
    assert "wrote best.yaml" in out
    document = yaml.safe_load((cwd / "best.yaml").read_text())
    assert document["search"]["num_samples"] == 1 and document["search"]["space"] == {}
    # the second run's train.lr=0.005 pinned a searched key: the best trial's searched values
    # are the other two, and the pinned value is the export's
    best = dict(re.findall(r"^  (\S+) = (\S+)$", out, re.M))
    assert set(best) == {"schedule.lambda_warmup_frac", "quant.scheme"}, out
    assert document["train"]["lr"] == pytest.approx(0.005)
    warmup = float(best["schedule.lambda_warmup_frac"])
    assert document["schedule"]["lambda_warmup_frac"] == pytest.approx(warmup)
    assert document["quant"]["scheme"] == best["quant.scheme"]
    assert "valid sweep 'twice-best'" in _ok(_cli(cwd, "validate", "best.yaml"))
    report = _ok(_cli(cwd, "report", "twice", "--out", "figures"))
    assert "finished trials only" in report
    assert (cwd / "figures" / "twice_parallel_coordinates.png").is_file()


def test_a_stop_condition_ends_the_sweep_and_tables_say_what_they_show(tmp_path: Path) -> None:
    """``search.stop_at`` (any bpb <= 100: the first evaluation) stops the sweep at step 10 of
    20: it ends normally, and its trials are stopped early everywhere a user looks (a trial Tune
    had not started yet when the sweep stopped never runs)."""
    import optuna

    at_rung = "ablation=[{name: at10, rows: quant.scheme, value: val/bpb, at_step: 10}]"
    result = _cli(tmp_path, "run", "demo", *TINY, "search.stop_at=100", at_rung,
                  "resources.max_concurrent_trials=2", "--name", "stopped")  # fmt: skip
    out = _ok(result)
    assert "interrupted" not in out
    client = _client(tmp_path)
    experiment = client.get_experiment_by_name("bitsweep")
    children = client.search_runs([experiment.experiment_id], "tags.`bitsweep.role` = 'trial'")
    n = len(children)
    assert n >= 1 and f"{n} trials: 0 finished, {n} stopped early, 0 failed" in out
    at_ten = 0
    for child in children:
        assert child.data.tags["bitsweep.status"] == "stopped_early"
        # at the first evaluation, or before it for a trial that had just started
        stopped_at = re.search(r"\[stopped early @ (\d+)/20\]$", child.info.run_name)
        assert stopped_at and int(stopped_at.group(1)) in (0, 10), child.info.run_name
        at_ten += int(stopped_at.group(1)) == 10
        assert "Stopped early" in child.data.tags["mlflow.note.content"]
    assert at_ten >= 1
    sweep_id = re.search(r"^sweep (stopped-[0-9a-f]{6}):", out, re.M).group(1)
    storage = f"sqlite:///{tmp_path / 'bitsweep_results' / sweep_id / 'optuna.db'}"
    states = {t.state for t in optuna.load_study(study_name=sweep_id, storage=storage).trials}
    assert (
        optuna.trial.TrialState.PRUNED in states and optuna.trial.TrialState.COMPLETE not in states
    )
    report = _ok(_cli(tmp_path, "report", "stopped", "--out", "figures"))
    assert f"every trial at step 10 ({at_ten} reached it" in report


def test_a_time_budget_ends_the_sweep(tmp_path: Path) -> None:
    # 2000 tiny trials one at a time take far longer than 20 s on any machine (each is ~1 s), so
    # only the budget can have ended this sweep
    result = _cli(tmp_path, "run", "demo", *TINY, "search.num_samples=2000",
                  "search.time_budget_s=20", "resources.max_concurrent_trials=1")  # fmt: skip
    out = _ok(result)
    trials = int(re.search(r"^sweep \S+: (\d+) trials", out, re.M).group(1))
    assert 1 <= trials < 2000


def _trial_processes() -> list[Any]:
    """The running one-process trials of this session's Ray (Tune's function-trainable actors):
    children of its raylet, so another Ray on the machine (a parallel test worker's) is left be."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("ray::ImplicitFunc") or cmdline.startswith(
            "ray::single_process_trial"
        ):
            with contextlib.suppress(psutil.Error):
                parent = proc.parent()
                if parent is not None and SESSION_DIR[0] in " ".join(parent.cmdline()):
                    found.append(proc)
    return found


def _ray_titles() -> list[str]:
    import psutil

    titles = (" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
    return sorted({t[:60] for t in titles if t.startswith("ray::")})


@pytest.mark.parametrize("max_failures", [0, 1])
def test_a_killed_trial_is_retried_up_to_max_failures(max_failures: int, tmp_path: Path) -> None:
    """SIGKILL of a trial's process after its first checkpoint: with ``resources.max_failures=1``
    Tune restarts it from that checkpoint and the sweep finishes it in its one MLflow run; with
    the default 0 the trial ends failed and the console says so in one line (issue 17's noise)."""
    args = ["run", "demo", *TINY, "search.num_samples=1", "train.steps=600", "train.eval_every=50",
            f"resources.max_failures={max_failures}", "--address", ADDRESS[0]]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=tmp_path,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    killed: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline and proc.poll() is None:
            trial_dirs = list(tmp_path.glob("bitsweep_results/*/*/checkpoint_*"))
            trials = _trial_processes()
            if trial_dirs and trials:  # a checkpoint to restart from, and the trial still running
                trials[0].kill()
                killed.append(trials[0].pid)
            time.sleep(0.2)
        output, _ = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed, f"the trial was never killed mid-run:\n{output}\n{_ray_titles()}"
    client = _client(tmp_path)
    experiment = client.get_experiment_by_name("bitsweep")
    children = [r for r in client.search_runs([experiment.experiment_id])
                if r.data.tags.get("bitsweep.role") == "trial"]  # fmt: skip
    assert len(children) == 1, [c.data.tags for c in children]  # a retry keeps its one run
    run = children[0]
    if max_failures:
        assert proc.returncode == 0, output
        assert run.info.status == "FINISHED" and run.data.tags["bitsweep.status"] == "finished"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
        assert steps[-1] == 600 and len(steps) == len(set(steps)), steps  # resumed, not restarted
    else:
        assert proc.returncode == 1, output
        assert run.info.status == "FAILED" and run.data.tags["bitsweep.status"] == "failed"
        assert "every trial of sweep 'demo' failed: ActorDiedError" in output
        # one line per failed trial, the details in its error.txt: no Ray traceback or log wall
        # (a killed process also gets Ray's one "(raylet) A worker died" line, which Ray prints
        # from its own thread whatever the log settings)
        lines = [line for line in output.splitlines() if "failed:" in line]
        assert len(lines) == 2, output  # the trial's line and the sweep's line
        error_file = re.search(r"details: (\S+error\.txt)", lines[0]).group(1)
        assert "The actor died unexpectedly" in Path(error_file).read_text()  # the details
        for noise in ("Traceback", "Trials did not complete", "Warning"):
            assert noise not in output, output
        assert not re.search(r"\bERROR \S+\.py:\d+", output), output  # no Ray logger lines


def test_an_impossible_resource_request_exits_2_naming_the_key(tmp_path: Path) -> None:
    result = _cli(tmp_path, "run", "demo", *TINY, "resources.cpus_per_worker=64", timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "resources.cpus_per_worker" in result.stderr and "asks for 64 CPUs" in result.stderr
    assert "largest node has 2" in result.stderr  # the session's Ray: 2 CPUs
    assert "Traceback" not in result.stderr
    if (tmp_path / "mlflow.db").exists():  # no parent run left RUNNING
        client = _client(tmp_path)
        experiment = client.get_experiment_by_name("bitsweep")
        assert experiment is None or not client.search_runs([experiment.experiment_id])


# ---- the README's quick start, literally, in a fresh shell --------------------------------------


def _quick_start() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    """Every command of the quick start, in one fresh bash (no virtualenv active, .venv/bin not on
    PATH), from a folder with the repository's make files and its .venv; DEMO_ARGS (which the
    README documents) keeps the demo tiny, MLFLOW_PORT keeps `mlflow ui` off a busy port 5000."""
    commands = _quick_start()
    assert commands[0] == "make demo" and any(c.startswith("mlflow ui") for c in commands)
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("Makefile", "pyproject.toml", "constraints.txt", "README.md"):
        shutil.copy2(REPO / name, clone / name)
    (clone / ".venv").symlink_to(REPO / ".venv")
    # `make demo` must find the install up to date (else it would reinstall from this folder)
    fresh = subprocess.run(["make", "-q", ".venv/.installed"], cwd=clone, capture_output=True)
    assert fresh.returncode == 0, "run `make setup` in the repository first"
    venv_bin = str(REPO / ".venv" / "bin")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    port = _free_port()
    env = {k: v for k, v in _env().items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(PATH=path, MLFLOW_PORT=str(port), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
               DEMO_ARGS=" ".join(TINY))  # fmt: skip
    script = "set -e\n" + "\n".join(commands) + "\n"
    log = tmp_path / "quick_start.log"
    with open(log, "wb") as out:
        shell = subprocess.Popen(["bash", "--noprofile", "--norc", "-c", script], cwd=clone,
                                 env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 1500
        while True:
            assert shell.poll() is None, log.read_text()[-4000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(2)
        experiments = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5"
        with urllib.request.urlopen(experiments, timeout=10) as response:
            names = [e["name"] for e in json.load(response)["experiments"]]
        assert "bitsweep" in names
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(shell.pid, sig)
                shell.wait(timeout=20)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
    printed = log.read_text()
    assert re.search(r"^sweep demo-[0-9a-f]{6}: 2 trials", printed, re.M), printed[-4000:]
    assert "ablation scheme" in printed and "parent_run" in printed  # report and list ran
    assert (clone / "figures").is_dir()
