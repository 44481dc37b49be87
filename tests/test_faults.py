"""Faults an operator meets, reproduced for real: a killed driver, a tracking server that goes
away, a second copy of a sweep, a tampered ``tuner.pkl`` and a storage that refuses writes.

Each test runs the ``bitsweep`` CLI in a subprocess against a real ``mlflow server`` on
127.0.0.1 and counts the outcome with MLflow's own client. Processes a test starts are stopped
through their process group (they get their own session), never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

TINY = ["model.d_model=32", "model.n_heads=2", "model.seq_len=32", "train.batch_size=8",
        "data.eval_batches=1", "train.steps=20", "train.eval_every=10",
        "search.scheduler.type=none", "resources.max_concurrent_trials=1"]  # fmt: skip
SAMPLES = 3


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str, experiment: str) -> tuple[list[Any], list[Any]]:
    """(parent runs, child runs) of ``experiment``."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("bitsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("bitsweep.role") == "trial"]
    return parents, children


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _cli(*args: str, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _wait_for(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the sweep ended ({proc.returncode}) before the fault:\n{out}")
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("the moment for the fault never came")


def _stop_group(proc: subprocess.Popen) -> None:
    """Whatever the driver's session still runs (its Ray), stopped through the process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _sweep_folder(results: Path) -> Path:
    folders = [p for p in results.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def _assert_exact(uri: str, experiment: str, samples: int) -> None:
    """``samples`` finished child runs, none RUNNING, no metric step logged twice."""
    client = _client(uri)
    parents, children = _runs(uri, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not [c for c in children if c.info.status == "RUNNING"]
    finished = [c for c in children if c.data.tags["bitsweep.status"] == "finished"]
    assert len(finished) == samples, [(c.info.run_name, c.data.tags) for c in children]
    assert all(c.info.status == "FINISHED" for c in finished)
    for child in finished:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/loss")]
        assert steps == [10, 20], steps


def _finished(uri: str, experiment: str) -> int:
    _, children = _runs(uri, experiment)
    return sum(c.data.tags.get("bitsweep.status") == "finished" for c in children)


def _mid_trial_since(uri: str, experiment: str, since_ms: int) -> bool:
    """A trial logged an evaluation after ``since_ms`` and is still running (it holds a
    checkpoint), after at least one trial finished."""
    client = _client(uri)
    _, children = _runs(uri, experiment)
    running = [c for c in children if c.data.tags.get("bitsweep.status") == "running"]
    return _finished(uri, experiment) >= 1 and any(
        m.timestamp > since_ms
        for c in running
        for m in client.get_metric_history(c.info.run_id, "val/loss")
    )


def test_a_driver_sigkilled_at_each_moment_in_turn_resumes_exactly(
    tracking_server: str, tmp_path: Path
) -> None:
    """One sweep, its driver SIGKILLed three times, each resume killed at the next moment:

    1. the first child run is open (Tune's first snapshot may or may not hold the trial);
    2. a trial just finished (the study has told it, Tune's snapshot, every ~10 s, has not);
    3. halfway through the next trial, right after its checkpoint, when Tune copies its state
       into the storage: the copy is cut, as a kill during it does (resume puts back the last
       whole snapshot).

    The last resume ends with exactly ``SAMPLES`` finished runs, each configuration counted once
    in the study, and every killed driver's Ray processes stopped.
    """
    experiment = "kill-in-turn"
    results = tmp_path / "results"
    args = ["run", "demo", *TINY, f"search.num_samples={SAMPLES}",
            f"tracking.uri={tracking_server}", f"tracking.experiment={experiment}",
            f"storage.path={results}"]  # fmt: skip
    orphans: list[int] = []
    started: list[subprocess.Popen] = []

    def kill_when(cli_args: list[str], moment: Callable[[], bool]) -> Path:
        started.append(proc := _start(cli_args, tmp_path))
        _wait_for(proc, moment)
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone: its Ray is orphaned, as in life
        proc.wait(timeout=30)
        found = _sweep_folder(results)
        record = json.loads((found / "bitsweep_pids.json").read_text())
        orphans.extend(p["pid"] for p in record["processes"] if p["kind"] != "driver")
        return found

    try:
        folder = kill_when(args, lambda: bool(_runs(tracking_server, experiment)[1]))
        resume = ["resume", folder.name, "--storage", str(results)]
        kill_when(resume, lambda: _finished(tracking_server, experiment) >= 1)
        since = int(time.time() * 1000)
        kill_when(resume, lambda: _mid_trial_since(tracking_server, experiment, since))
        for state in folder.glob("experiment_state-*.json"):
            state.write_bytes(b"")
        done = _cli(*resume, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "UpdateFinishedTrialError" not in done.stdout + done.stderr
        assert "last whole snapshot" in done.stderr
    finally:
        for proc in started:
            _stop_group(proc)
    _assert_exact(tracking_server, experiment, SAMPLES)
    import optuna

    study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == SAMPLES  # each configuration counted once, none trained twice
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    import psutil

    # the killed drivers' Ray processes were stopped by the resumes (by pid, from their record)
    assert orphans and not [p for p in orphans if psutil.pid_exists(p) and _is_ray(p)]


def _is_ray(pid: int) -> bool:
    import psutil

    try:
        return "ray" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def test_second_copy_is_refused_and_sigterm_stops_like_ctrl_c(
    tracking_server: str, tmp_path: Path
) -> None:
    import socket

    experiment = "second-copy"
    results = tmp_path / "results"
    # long enough (8 trials one at a time) to still run when the refused second copy has ended
    args = ["run", "demo", *TINY, "search.num_samples=8", "resources.max_concurrent_trials=1",
            f"tracking.uri={tracking_server}", f"tracking.experiment={experiment}",
            f"storage.path={results}"]  # fmt: skip
    proc = _start(args, tmp_path)
    try:
        _wait_for(proc, lambda: bool(_runs(tracking_server, experiment)[1]))
        folder = _sweep_folder(results)
        second = _cli("resume", folder.name, "--storage", str(results), cwd=tmp_path, timeout=120)
        assert proc.poll() is None, "the first driver ended while the second one was refused"
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"pid {proc.pid}" in second.stderr and socket.gethostname() in second.stderr
        assert "Traceback" not in second.stderr
        os.kill(proc.pid, signal.SIGTERM)  # a scheduler's stop: like Ctrl+C
        output, _ = proc.communicate(timeout=180)
    finally:
        _stop_group(proc)
    assert proc.returncode == 143, output  # 128 + SIGTERM, not Ctrl+C's 130
    assert f"bitsweep resume {folder.name}" in output or "bitsweep resume" in output
    parents, children = _runs(tracking_server, experiment)
    assert children and not [r for r in [*parents, *children] if r.info.status == "RUNNING"]
    # the lock went with the driver: a later resume is not refused
    assert not (folder / "bitsweep.lock").read_text().strip()


def test_tampered_tuner_pkl_is_refused_before_unpickling(
    tracking_server: str, tmp_path: Path
) -> None:
    import pickle

    results = tmp_path / "results"
    args = ["run", "demo", *TINY, "search.num_samples=1", "train.steps=40",
            f"tracking.uri={tracking_server}", "tracking.experiment=tamper",
            f"storage.path={results}"]  # fmt: skip
    done = _cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    folder = _sweep_folder(results)
    # four evaluations, four checkpoints written: the latest and the best are kept
    kept = [len(list(t.glob("checkpoint_*"))) for t in folder.glob("trial_*")]
    assert kept and all(1 <= n <= 2 for n in kept), kept
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    original = (folder / "tuner.pkl").read_bytes()
    (folder / "tuner.pkl").write_bytes(pickle.dumps(Payload()))
    refused = _cli("resume", folder.name, "--storage", str(results), cwd=tmp_path, timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "tuner.pkl" in refused.stderr and "Traceback" not in refused.stderr
    assert not marker.exists()  # nothing from the storage ran
    # a searcher state replaced the same way is refused too
    (folder / "tuner.pkl").write_bytes(original)
    state = sorted(folder.glob("searcher-state-*.pkl"))[-1]
    state.write_bytes(pickle.dumps(Payload()))
    refused = _cli("resume", folder.name, "--storage", str(results), cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and state.name in refused.stderr, refused.stderr
    assert not marker.exists()


def _server(port: int, root: Path) -> subprocess.Popen:
    """A real ``mlflow server`` on 127.0.0.1:``port`` over the store in ``root`` (healthy)."""
    import urllib.request

    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(port), "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]  # fmt: skip
    log = open(root / "server.log", "ab")  # noqa: SIM115 - the server owns it until it exits
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240  # a loaded 2-core machine starts it slowly
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                message = f"mlflow server did not start; see {root / 'server.log'}"
                raise RuntimeError(message) from None
            time.sleep(0.25)


def _stop_server(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """This module's own real ``mlflow server`` (stopped by its process group)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = _server(port, tmp_path_factory.mktemp("tracking"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop_server(proc)


@pytest.mark.parametrize("comes_back", ["during-the-sweep", "after-the-sweep"])
def test_tracking_outage_loses_nothing(comes_back: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    store = tmp_path / "store"
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    server = _server(port, store)
    results = tmp_path / "results"
    # an outage that ends mid-sweep needs a sweep that outlasts it (tiny trials take ~1 s each),
    # and the end-of-sweep retry (60 s by default) to cover a machine that trains faster still;
    # one that outlasts the sweep is cut short at the end after 5 s of retries
    during = comes_back == "during-the-sweep"
    samples = 12 if during else SAMPLES
    args = ["run", "demo", *TINY, f"search.num_samples={samples}", f"tracking.uri={uri}",
            "tracking.experiment=outage", f"storage.path={results}"]  # fmt: skip
    flush_timeout = "120" if during else "5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "BITSWEEP_FLUSH_TIMEOUT_S": flush_timeout},
    )  # fmt: skip
    try:
        _wait_for(proc, lambda: any("val/loss" in c.data.metrics for c in _runs(uri, "outage")[1]))
        _stop_server(server)  # every write fails from here on
        if during:
            time.sleep(10)
            server = _server(port, store)
        output, _ = proc.communicate(timeout=400)
        if comes_back == "after-the-sweep":
            assert proc.returncode == 1, output
            assert "bitsweep sync" in output and "Traceback" not in output
            server = _server(port, store)
            folder = _sweep_folder(results)
            synced = _cli("sync", folder.name, "--storage", str(results), cwd=tmp_path)
            assert synced.returncode == 0, synced.stdout + synced.stderr
        else:
            assert proc.returncode == 0, output
            assert "tracking behind" in output
        _assert_exact(uri, "outage", samples)
    finally:
        _stop_group(proc)
        _stop_server(server)


def test_full_disk_fails_in_one_line_and_closes_runs(tracking_server: str, tmp_path: Path) -> None:
    storage = tmp_path / "tiny"
    storage.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(storage)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        args = ["run", "demo", *TINY, "search.num_samples=2", f"tracking.uri={tracking_server}",
                "tracking.experiment=full-disk", f"storage.path={storage}"]  # fmt: skip
        done = _cli(*args, cwd=tmp_path, timeout=400)
    finally:
        subprocess.run(["umount", "-l", str(storage)], check=False)
    assert done.returncode != 0, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("bitsweep:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "no space left" in errors[0].lower() and str(storage) in errors[0], errors[0]
    parents, children = _runs(tracking_server, "full-disk")
    assert not [r for r in [*parents, *children] if r.info.status == "RUNNING"]
