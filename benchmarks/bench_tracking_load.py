"""Load on the tracker: MLflow writes per second against a local ``mlflow server``, driver memory.

Drives a real :class:`orchestrator.tracking.SweepTracker` (with the on-disk write buffer, as a
sweep's driver does) through ``--trials`` synthetic trials of ``--steps`` results each, the way
:class:`orchestrator.tune_callbacks.MLflowTuneCallback` would, against a ``mlflow server`` this
script starts on 127.0.0.1 (and stops by its process group). Reports the writes per second
sustained, the time per trial, the driver's RSS growth over the trials, and checks that every
step arrived.
No Ray, no training: this isolates what tracking costs the driver. The full 200-trial sweep of
tiny trials (issue 17 "Load") is ``bitsweep run demo search.num_samples=200 ...``.

Run: ``python -m benchmarks.bench_tracking_load [--trials 200] [--steps 10]``; writes
``benchmarks/results/bench_tracking_load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.common import write_result


def _server(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(port), "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]  # fmt: skip
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                env=env, start_new_session=True)  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1):
                return proc, uri
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start; see {root}/server.log") from None
            time.sleep(0.25)


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def measure(trials: int, steps: int) -> dict[str, float]:
    """Run the synthetic load; returns the figures (see the module doc)."""
    from orchestrator.tracking import SweepTracker

    with tempfile.TemporaryDirectory(prefix="bitsweep-load-") as tmp:
        root = Path(tmp)
        proc, uri = _server(root)
        try:
            tracker = SweepTracker("load", tracking_uri=uri, objectives=[("val/loss", "min")])
            tracker.buffer_dir = str(root / "sweep")
            tracker.start()
            rss0, writes, started = _rss_mb(), 0, time.perf_counter()
            for t in range(trials):
                trial_id = f"t{t:04d}"
                tracker.trial_started(trial_id, {"train.steps": steps, "train.lr": 1e-3 * t})
                for step in range(1, steps + 1):
                    result = {"step": step, "val/loss": 1.0 / step, "train/loss": 2.0 / step}
                    tracker.log_result(trial_id, result)
                    writes += 1
                tracker.trial_finished(trial_id)
                writes += 4  # create, params, status tag, terminate
            elapsed = time.perf_counter() - started
            pending = tracker.client.flush(30) if hasattr(tracker.client, "flush") else 0
            table = tracker.trial_table()
            histories = [len(tracker.client.get_metric_history(r, "val/loss"))
                         for r in table["run_id"]]  # fmt: skip
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    return {
        "trials": trials,
        "steps_per_trial": steps,
        "writes": writes,
        "seconds": round(elapsed, 2),
        "writes_per_s": round(writes / elapsed, 1),
        "ms_per_trial": round(1000 * elapsed / trials, 1),
        "driver_rss_growth_mb": round(_rss_mb() - rss0, 1),
        "pending_after": pending,
        "lost_steps": int(trials * steps - sum(histories)),
    }


def main() -> None:
    """Parse the arguments, measure, print and store the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    figures = measure(args.trials, args.steps)
    print(json.dumps(figures, indent=2))
    figures["markdown"] = markdown(figures)
    print(f"wrote {write_result('bench_tracking_load', figures)}")


def markdown(f: dict) -> str:
    """The BENCHMARKS.md section."""
    return "\n".join([
        "## 8. Tracking load", "",
        f"{f['trials']} tiny trials x {f['steps_per_trial']} steps logged through the sweep "
        f"tracker to a local `mlflow server`: {f['writes']} writes in {f['seconds']} s "
        f"({f['writes_per_s']} writes/s, {f['ms_per_trial']} ms per trial), driver memory "
        f"+{f['driver_rss_growth_mb']} MB, {f['pending_after']} writes left buffered, "
        f"{f['lost_steps']} steps lost.", "",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
