"""RESULTS.md sections of seed 004 (growth, the bit LM's telemetry, reversible memory) and the
search (a pointer to BENCHMARKS.md section 3)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.publish import figures
from orchestrator.publish.sources import Section, Sources, not_run
from orchestrator.publish.stats import Cell, cells, markdown_table

TELEMETRY = ["telemetry/K", "telemetry/C", "telemetry/S"]
BENCH_SEARCH = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "bench_search.json"


def _curves(r: Any, metric: str) -> dict[str, list[tuple[int, float, float]]]:
    """Per trial: (step, seconds since the run started, value) of ``metric``."""
    client = r._client
    out = {}
    for _, row in r.completed_trials().iterrows():
        start = client.get_run(row["run_id"]).info.start_time
        history = sorted(client.get_metric_history(row["run_id"], metric), key=lambda m: m.step)
        out[row["trial_id"]] = [(m.step, (m.timestamp - start) / 1000, m.value) for m in history]
    return out


def _first_below(curve: list[tuple[int, float, float]], target: float) -> tuple[int, float] | None:
    for step, seconds, value in curve:
        if value <= target:
            return step, seconds
    return None


def _growth(src: Sources, section: Section) -> None:
    grown, scratch = src.results("grown"), src.results("scratch")
    section.lines += ["", "### Grown vs trained from scratch at the final size", ""]
    if grown is None or scratch is None:
        section.lines.append(not_run("grown" if grown is None else "scratch"))
        return
    curves = {"grown": _curves(grown, "val/loss"), "scratch": _curves(scratch, "val/loss")}
    finals = {k: Cell(tuple(c[-1][2] for c in v.values() if c)) for k, v in curves.items()}
    target = max(f.mean for f in finals.values())  # the worse final loss: both can reach it
    size = {
        k.split(".")[1]: int(v)
        for k, v in scratch.trials.iloc[0].items()
        if k in ("model.n_layers", "model.d_model", "model.seq_len")
    }
    sizes = ", ".join(f"{k} {v}" for k, v in size.items())
    section.lines += [
        f"From {src.describe('grown')} and {src.describe('scratch')}. The scratch "
        f"runs train the size most grown runs ended at ({sizes}) from step 0. "
        f"Target: val/loss {target:.4f}, the worse of the two mean final losses.",
        "",
    ]
    rows = []
    for name, per_trial in curves.items():
        reached = [_first_below(c, target) for c in per_trial.values()]
        hits = [x for x in reached if x is not None]
        steps = Cell(tuple(float(s) for s, _ in hits))
        seconds = Cell(tuple(t for _, t in hits))
        rows.append(
            [
                name,
                finals[name].text(),
                f"{len(hits)}/{len(reached)}",
                steps.text(0),
                seconds.text(1),
            ]
        )
    section.lines += markdown_table(
        ["run", "final val/loss", "reach target", "steps to target", "seconds to target"], rows
    )
    frames = []
    groups: dict[str, list[str]] = {}
    for name, r in (("grown", grown), ("scratch", scratch)):
        h = r.history("val/loss")
        h["trial_id"] = f"{name}:" + h["trial_id"]
        frames.append(h)
        groups[name] = sorted(set(h["trial_id"]))
    path = figures.mean_curves(
        pd.concat(frames),
        groups,
        src.figure("seed004_growth"),
        metric="val/loss",
        title="Seed 004: grown vs from scratch",
    )
    section.add_figure("grown", path, "seed 004 growth", src.root)
    section.figures.setdefault("scratch", []).append(path)


def _telemetry(src: Sources, section: Section) -> None:
    r = src.results("bit_lm")
    section.lines += ["", "### The bit LM's telemetry over training", ""]
    if r is None:
        section.lines.append(not_run("bit_lm"))
        return
    present = [m for m in TELEMETRY if m in r.metrics]
    history = r.history([*present, "val/bpb"])
    rows = []
    for metric in [*present, "val/bpb"]:
        h = history[history["metric"] == metric]
        first = h[h["step"] == h["step"].min()]["value"]
        last = h[h["step"] == h["step"].max()]["value"]
        rows.append([metric, Cell(tuple(first)).text(), Cell(tuple(last)).text()])
    section.lines += [
        f"From {src.describe('bit_lm')}: negentropy K, LZ complexity C and "
        "symbiosis S of the validation predictions, first and last evaluation.",
        "",
    ]
    section.lines += markdown_table(["metric", "first evaluation", "last evaluation"], rows)
    path = figures.metric_panels(
        history,
        [*present, "val/bpb"],
        src.figure("seed004_telemetry"),
        title="Seed 004: bit LM telemetry",
    )
    section.add_figure("bit_lm", path, "seed 004 telemetry", src.root)


def _memory(src: Sources, section: Section) -> None:
    r = src.results("reversible_memory")
    section.lines += ["", "### Reversible blocks: activation memory against depth", ""]
    if r is None:
        section.lines.append(not_run("reversible_memory"))
        return
    metric = "perf/saved_activation_mib"
    by = cells(r.completed_trials(), ["model.n_layers", "model.reversible"], metric)
    depths = sorted({d for d, _ in by})
    section.lines += [
        f"From {src.describe('reversible_memory')}: MiB of tensors autograd saves "
        "for backward in one training step (first step).",
        "",
    ]
    section.lines += markdown_table(
        ["n_layers", "standard", "reversible", "reversible / standard"],
        [
            [
                d,
                by.get((d, False), Cell(())).text(2),
                by.get((d, True), Cell(())).text(2),
                _ratio(by.get((d, True)), by.get((d, False))),
            ]
            for d in depths
        ],
    )
    series = {
        ("reversible" if rev else "standard"): {
            float(d): by[(d, rev)] for d in depths if (d, rev) in by
        }
        for rev in (False, True)
    }
    path = figures.lines(
        series,
        src.figure("seed004_reversible_memory"),
        xlabel="n_layers",
        ylabel="saved activations (MiB)",
        title="Seed 004: reversible memory",
    )
    section.add_figure("reversible_memory", path, "seed 004 reversible memory", src.root)


def _ratio(a: Cell | None, b: Cell | None) -> str:
    if not a or not b or not a.n or not b.n or not b.mean:
        return "-"
    return f"{a.mean / b.mean:.2f}x"


def seed004(src: Sources) -> Section:
    """Growth vs scratch, the bit LM's telemetry, reversible memory against depth."""
    section = Section("seed004", "Seed 004: progressive scale-up and the bit-level LM", [])
    _growth(src, section)
    _telemetry(src, section)
    _memory(src, section)
    return section


def search(_: Sources, bench: Path = BENCH_SEARCH) -> Section:
    """What BENCHMARKS.md section 3 means for a user, with its figures."""
    section = Section("search", "The search", [""])
    if not bench.is_file():
        section.lines.append(
            "_No search benchmark on record: run `python -m benchmarks.bench_search`._"
        )
        return section
    data = json.loads(bench.read_text())
    rows = []
    for task, r in (data.get("single") or {}).items():
        base = r["methods"]["random"]["median"]
        for method, m in r["methods"].items():
            ratio = base / m["median"] if m["median"] else math.nan
            rows.append(
                [
                    task,
                    method,
                    f"{m['median']:,.0f}",
                    f"{m['misses']}/{len(data['seeds'])}",
                    f"{ratio:.2f}x",
                ]
            )
    multi = data.get("multi") or {}
    if multi:
        totals = sorted(multi["random_total_steps"])
        base = totals[len(totals) // 2]
        for method, m in multi["methods"].items():
            ratio = base / m["median"] if m["median"] else math.nan
            rows.append(
                [
                    "mixed-precision (hypervolume)",
                    method,
                    f"{m['median']:,.0f}",
                    f"{m['misses']}/{len(data['seeds'])}",
                    f"{ratio:.2f}x",
                ]
            )
    section.lines += [
        "From `benchmarks/results/bench_search.json`; the protocol, targets, replicate tables "
        "and what was tried are in [BENCHMARKS.md section 3](BENCHMARKS.md#3-search-efficiency) "
        f"({len(data.get('seeds', []))} search seeds per method, {data.get('samples')} trials "
        "each). Steps: training steps all trials had spent when a report first reached the "
        "target (median over seeds); the last column is random search's steps over the "
        "method's.",
        "",
        *markdown_table(["task", "method", "steps, median", "misses", "vs random"], rows),
        "",
        "For a user: at budgets of tens of short trials, most of the saving comes from stopping "
        "poor trials early (TPE + ASHA for one objective, MO-TPE + the Pareto-rank scheduler "
        "for several), not from the sampler alone; the savings shrink when the metric is noisy "
        "(a small validation set), and a searched optimum's margin is partly its training "
        "seed's luck, so rerun the winner over seeds (a grid over `train.seed`) before "
        "reporting it.",
    ]
    return section
