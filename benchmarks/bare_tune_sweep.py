"""The baseline of ``bench_sweep_load``: the same many-tiny-trials sweep in plain Ray Tune.

Ray Tune with Tune's own ``OptunaSearch`` (TPE, in-memory study), two trials at a time, each a
function trainable that reports twice with a checkpoint, as bitsweep's tiny trials do, and no
tracking. It prints a progress line per ended trial in bitsweep's format, so the benchmark
samples both drivers the same way. What this driver gains per trial is what Ray Tune and Optuna
keep of every trial for the whole sweep; bitsweep's driver is judged against it.

Run (by the benchmark): ``python -m benchmarks.bare_tune_sweep TRIALS STORAGE_DIR``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def tiny_trial(config: dict[str, Any]) -> None:
    """Two evaluations with a checkpoint each (none with ``BARE_NO_CHECKPOINT=1``), about as
    long as a tiny bitsweep trial."""
    from ray import tune

    for step in (10, 20):
        time.sleep(0.1)
        loss = (config["lr"] - 0.003) ** 2 + config["warmup"] / step
        if os.environ.get("BARE_NO_CHECKPOINT") == "1":
            tune.report({"val/loss": loss, "step": step})
            continue
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "model.pt").write_bytes(b"\0" * 4096)
            tune.report(
                {"val/loss": loss, "step": step},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )


def main() -> None:
    """Run the baseline sweep of ``argv[1]`` trials under the folder ``argv[2]``."""
    import ray
    from ray import tune
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    trials, storage = int(sys.argv[1]), Path(sys.argv[2]).resolve()

    class Progress(tune.Callback):
        ended = 0

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            Progress.ended += 1
            print(f"[bare] finished {Progress.ended} | stopped early 0 | failed 0", flush=True)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tiny_trial,
            param_space={"lr": tune.loguniform(1e-4, 1e-2), "warmup": tune.uniform(0, 1)},
            tune_config=tune.TuneConfig(
                search_alg=BasicVariantGenerator(max_concurrent=2)
                if os.environ.get("BARE_RANDOM") == "1"
                else OptunaSearch(metric="val/loss", mode="min", seed=0),
                num_samples=trials,
                max_concurrent_trials=2,
            ),
            run_config=tune.RunConfig(
                name="bare",
                storage_path=str(storage),
                callbacks=[Progress()],
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
        tuner.fit()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
