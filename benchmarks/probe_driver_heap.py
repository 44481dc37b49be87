"""Where a sweep driver's memory grows per trial (issue 17): tracemalloc inside the driver.

A diagnostic, not a benchmark: runs ``bitsweep run demo`` in this process with ``--trials`` tiny
trials (two at a time), takes a tracemalloc snapshot after the ``--first``-th and the
``--last``-th finished trial, and prints the driver's RSS at both, the Python heap's growth
between them and its largest sources (by file, then by call stack). With ``--rss-only`` (no
tracemalloc) it prints the RSS growth with and without glibc's free heap pages handed back
(``malloc_trim``: what a trim returns was fragmentation). ``--smaps`` adds where the RSS grew
by kind of mapping (the main heap, glibc's thread arenas, pymalloc's arenas), the thread count
and Python's allocated blocks; ``--census`` counts live objects by type instead and shows who
holds one of each type that grew (how the MLflow artifact-repository cache was found).
tracemalloc's own bookkeeping inflates the RSS figures; compare the heap growth with
``benchmarks/bench_sweep_load.py``'s RSS slope, measured without it.

Run: ``python -m benchmarks.probe_driver_heap [--trials 75 --first 20 --last 70]
[--rss-only | --smaps | --census]``.
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


def _smaps() -> dict[str, float]:
    """RSS (KiB) by kind of mapping, plus the thread count and Python's allocated blocks."""
    import sys

    kinds: dict[str, float] = {}
    kind = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            size_mib = (end - start) / 2**20
            path = fields[5] if len(fields) > 5 else ""
            if path:
                kind = path if path.startswith("[") else "file:" + Path(path).name.split(".")[0]
            elif size_mib >= 60:
                kind = "anon >=60 MiB (glibc thread arenas)"
            elif 0.99 <= size_mib <= 1.01:
                kind = "anon 1 MiB (pymalloc arenas)"
            else:
                kind = "anon other"
        elif fields[0] == "Rss:":
            kinds[kind] = kinds.get(kind, 0.0) + float(fields[1])
    top = dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:8])
    top["threads"] = float(len(list(Path("/proc/self/task").iterdir())))
    top["python blocks (k)"] = sys.getallocatedblocks() / 1000
    return top


def _malloc_trim() -> bool:
    """glibc's ``malloc_trim(0)``: free heap pages back to the system; False without glibc."""
    import ctypes
    import ctypes.util

    try:
        trim = getattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim", None)
    except OSError:
        return False
    return trim is not None and trim(0) >= 0


def _census() -> dict[str, int]:
    """Live gc-tracked objects by type name."""
    counts: dict[str, int] = {}
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        counts[name] = counts.get(name, 0) + 1
    return counts


def _holders(obj: Any, ignore: set[int], depth: int = 5) -> list[str]:
    """A chain of referrers of ``obj`` (type names and a few keys), skipping frames and the
    probe's own lists (``ignore``)."""
    chain = []
    for _ in range(depth):
        refs = gc.get_referrers(obj)
        ignore.add(id(refs))
        kept = [r for r in refs if id(r) not in ignore and type(r).__name__ != "frame"]
        if not kept:
            break
        obj = kept[0]
        label = type(obj).__qualname__
        if isinstance(obj, dict):
            label += f"{sorted(map(str, obj))[:5]}"
        chain.append(label)
    return chain


def _print_census(last: dict[str, int], first: dict[str, int], trials: int) -> None:
    grew = sorted(((n - first.get(name, 0), name) for name, n in last.items()), reverse=True)
    objs = gc.get_objects()
    for delta, name in grew[:30]:
        found = [o for o in objs if type(o).__qualname__ == name]
        print(f"{name}: +{delta} ({delta / trials:.1f}/trial)")
        picks = [found[-1], found[len(found) // 2]]
        while picks:
            sample = picks.pop()
            print("    held by:", " <- ".join(_holders(sample, {id(objs), id(found)})))
        del sample


def main() -> None:
    """Run the sweep with the probe attached and print where the heap grew."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=75)
    parser.add_argument("--first", type=int, default=20)
    parser.add_argument("--last", type=int, default=70)
    parser.add_argument(
        "--rss-only", action="store_true",
        help="no tracemalloc (its bookkeeping swamps the RSS): RSS growth with and without "
        "malloc_trim only",
    )  # fmt: skip
    parser.add_argument(
        "--census", action="store_true",
        help="no tracemalloc: count live objects by type at both trials and show who holds "
        "one instance of each type that grew most",
    )  # fmt: skip
    parser.add_argument(
        "--smaps", action="store_true",
        help="no tracemalloc: where the RSS grew, by kind of mapping (/proc/self/smaps), with "
        "the process's threads and Python's allocated blocks",
    )  # fmt: skip
    args = parser.parse_args()
    if args.smaps:
        args.rss_only = True
    if not (args.rss_only or args.census):
        tracemalloc.start(4)
    snaps: dict[int, tuple[Any, float]] = {}
    trimmed: dict[int, float] = {}  # RSS once glibc's free pages are handed back
    maps: dict[int, dict[str, float]] = {}

    from ray.tune import Callback

    import orchestrator.runner as runner
    from orchestrator.cli import main as cli_main

    class Probe(Callback):
        finished = 0

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            Probe.finished += 1
            if Probe.finished in (args.first, args.last):
                gc.collect()
                heap = (
                    _census()
                    if args.census
                    else (None if args.rss_only else tracemalloc.take_snapshot())
                )
                snaps[Probe.finished] = (heap, _rss_mib())
                if args.smaps:
                    maps[Probe.finished] = _smaps()
                # with tracemalloc on, its bookkeeping swamps what a trim hands back
                if args.rss_only and _malloc_trim():
                    trimmed[Probe.finished] = _rss_mib()

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
    trials = args.last - args.first
    per_trial = (rss_last - rss_first) / trials * 1024
    print(f"driver RSS: {rss_first:.0f} MiB after trial {args.first}, {rss_last:.0f} MiB after "
          f"trial {args.last} ({per_trial:.0f} KiB/trial"
          f"{'' if args.rss_only else ', tracemalloc included'})")  # fmt: skip
    if len(trimmed) == 2:
        kept = (trimmed[args.last] - trimmed[args.first]) / trials * 1024
        print(f"after malloc_trim at both: {kept:.0f} KiB/trial (the rest was fragmentation)")
    if len(maps) == 2:
        for kind, kib in maps[args.last].items():
            grew = kib - maps[args.first].get(kind, 0.0)
            print(f"  {kind}: {maps[args.first].get(kind, 0.0):.0f} -> {kib:.0f} "
                  f"({grew / trials:+.1f}/trial)")  # fmt: skip
    if args.rss_only:
        return
    if args.census:
        _print_census(last, first, trials)
        return
    growth = sum(s.size_diff for s in last.compare_to(first, "filename")) / 2**20
    print(f"Python heap growth between them: {growth:.2f} MiB "
          f"({growth * 1024 / trials:.0f} KiB/trial)")  # fmt: skip
    for stat in last.compare_to(first, "filename")[:15]:
        print(stat)
    print("---- by call stack")
    for stat in last.compare_to(first, "traceback")[:8]:
        print(stat)
        for line in stat.traceback.format()[-6:]:
            print("   ", line)


if __name__ == "__main__":
    main()
