"""Shared harness: repeated timing with median and spread, machine description, result files.

Every benchmark measures its baseline in the same process and run, reports ratios, and writes
``benchmarks/results/<name>.json``; ``python -m benchmarks.report`` renders BENCHMARKS.md from
those files, so the recorded figures always come with the command and machine that made them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Stats:
    """Timing of repeated runs, in seconds."""

    median: float
    p10: float
    p90: float
    repeats: int

    @property
    def spread(self) -> float:
        """``(p90 - p10) / median``: the relative spread of the samples."""
        return (self.p90 - self.p10) / self.median if self.median else 0.0

    def ratio_to(self, baseline: Stats) -> float:
        """This median over the baseline's median."""
        return self.median / baseline.median


def measure(fn: Callable[[], Any], *, repeats: int = 15, warmup: int = 3) -> Stats:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; return the timing statistics."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    q = statistics.quantiles(samples, n=10) if len(samples) >= 2 else [samples[0]] * 9
    return Stats(statistics.median(samples), q[0], q[-1], len(samples))


def interleaved(
    fns: dict[str, Callable[[], Any]], *, rounds: int = 15, warmup: int = 2
) -> dict[str, Stats]:
    """Time several variants round-robin, so slow drifts of a noisy machine hit them all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    out = {}
    for name, values in samples.items():
        values.sort()
        q = statistics.quantiles(values, n=10)
        out[name] = Stats(statistics.median(values), q[0], q[-1], len(values))
    return out


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()  # fmt: skip
    return info


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``results/<name>.json``: the payload, the command line, the machine and the date."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "command": " ".join(["python", "-m", f"benchmarks.{name}", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        **payload,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=_jsonable))
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Stats):
        return asdict(value) | {"spread": value.spread}
    raise TypeError(f"cannot serialize {type(value).__name__}")
