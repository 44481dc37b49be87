"""Where a sweep driver's memory grows per trial (issue 17): tracemalloc inside the driver.

A diagnostic, not a benchmark: runs ``bitsweep run demo`` in this process with ``--trials`` tiny
trials (two at a time), takes a tracemalloc snapshot after the ``--first``-th and the
``--last``-th finished trial, and prints the driver's RSS at both, the Python heap's growth
between them and its largest sources (by file, then by call stack). tracemalloc's own
bookkeeping inflates the RSS figures; compare the heap growth with
``benchmarks/bench_sweep_load.py``'s RSS slope, measured without it.

Run: ``python -m benchmarks.probe_driver_heap [--trials 75 --first 20 --last 70]``.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

TINY = ["model.d_model=32", "model.n_heads=2", "model.seq_len=32", "train.batch_size=8",
        "data.eval_batches=1", "train.steps=20", "train.eval_every=10",
        "search.scheduler.type=none", "resources.max_concurrent_trials=2"]  # fmt: skip


def _rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def main() -> None:
    """Run the sweep with the probe attached and print where the heap grew."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=75)
    parser.add_argument("--first", type=int, default=20)
    parser.add_argument("--last", type=int, default=70)
    args = parser.parse_args()
    tracemalloc.start(4)
    snaps: dict[int, tuple[Any, float]] = {}

    from ray.tune import Callback

    import orchestrator.runner as runner
    from orchestrator.cli import main as cli_main

    class Probe(Callback):
        finished = 0

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            Probe.finished += 1
            if Probe.finished in (args.first, args.last):
                gc.collect()
                snaps[Probe.finished] = (tracemalloc.take_snapshot(), _rss_mib())

    plain = runner._callbacks
    runner._callbacks = lambda spec, tracker, stream: [*plain(spec, tracker, stream), Probe()]
    root = Path(tempfile.mkdtemp(prefix="probe-driver-heap-"))
    try:
        cli_main(["run", "demo", *TINY, f"search.num_samples={args.trials}",
                  f"storage.path={root / 'results'}",
                  f"tracking.uri=sqlite:///{root / 'mlflow.db'}"])  # fmt: skip
    except SystemExit:
        pass
    finally:
        runner._callbacks = plain
    (first, rss_first), (last, rss_last) = snaps[args.first], snaps[args.last]
    per_trial = (rss_last - rss_first) / (args.last - args.first)
    growth = sum(s.size_diff for s in last.compare_to(first, "filename")) / 2**20
    print(f"driver RSS: {rss_first:.0f} MiB after trial {args.first}, {rss_last:.0f} MiB after "
          f"trial {args.last} ({per_trial:.2f} MiB/trial, tracemalloc included)")  # fmt: skip
    print(f"Python heap growth between them: {growth:.2f} MiB "
          f"({growth * 1024 / (args.last - args.first):.0f} KiB/trial)")  # fmt: skip
    for stat in last.compare_to(first, "filename")[:15]:
        print(stat)
    print("---- by call stack")
    for stat in last.compare_to(first, "traceback")[:8]:
        print(stat)
        for line in stat.traceback.format()[-6:]:
            print("   ", line)


if __name__ == "__main__":
    main()
