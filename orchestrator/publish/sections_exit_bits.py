"""RESULTS.md sections of seed 001 (Hadamard x early exit x layer dropout) and seed 000
(accuracy against total bits: learned bit-widths and the mixed-precision search)."""

from __future__ import annotations

import pandas as pd

from orchestrator.publish import figures
from orchestrator.publish.sources import Section, Sources, not_run
from orchestrator.publish.stats import cells, markdown_table, verdict

EXIT_KEYS = ["scenario", "quant.scheme", "model.layer_dropout"]


def _exit_table(table: pd.DataFrame) -> pd.DataFrame:
    """A model without exits runs every layer: its exit loss is its last layer's, compute 1."""
    t = table.copy()
    t["val/loss_exit"] = (
        t["val/loss_exit"].fillna(t["val/loss"]) if "val/loss_exit" in t else (t["val/loss"])
    )
    t["val/compute_frac"] = t["val/compute_frac"].fillna(1.0) if "val/compute_frac" in t else 1.0
    return t


def seed001(src: Sources) -> Section:
    """Validation loss at the realized exits against the compute fraction, per cell."""
    section = Section("seed001", "Seed 001: Hadamard x early exit x layer dropout", [])
    r = src.results("early_exit")
    if r is None:
        section.lines += ["", not_run("early_exit")]
        return section
    t = _exit_table(r.completed_trials())
    full = cells(t, EXIT_KEYS, "val/loss")
    exit_loss = cells(t, EXIT_KEYS, "val/loss_exit")
    compute = cells(t, EXIT_KEYS, "val/compute_frac")
    section.lines += [
        "",
        f"From {src.describe('early_exit')}; mean ± std over training seeds. "
        "`val/loss`: the last layer's loss; `val/loss_exit`: the loss at the exits "
        "the gates chose per token; compute: the share of layer-token work done.",
        "",
    ]
    rows = [
        [
            f"{k[0]}, {k[1]}, layer dropout {k[2]}",
            full[k].text(),
            exit_loss[k].text(),
            compute[k].text(3),
        ]
        for k in sorted(full, key=str)
    ]
    section.lines += markdown_table(["cell", "val/loss", "val/loss_exit", "compute"], rows)
    section.lines += [
        "",
        "Does training with early exit cost the last layer's quality (the "
        "seed saw it did)? Early exit vs no exit, `val/loss` of the last layer:",
        "",
    ]
    for k in sorted(full, key=str):
        if k[0] != "early exit":
            continue
        base = full.get(("no exit", k[1], k[2]))
        if base is not None:
            section.lines.append(
                f"- {k[1]}, layer dropout {k[2]}: early exit is {verdict(full[k], base, 'min')}"
            )
    series = {
        f"{k[0]}, {k[1]}, ld {k[2]}": (compute[k], exit_loss[k]) for k in sorted(full, key=str)
    }
    path = figures.points(
        series,
        src.figure("seed001_exit_tradeoff"),
        xlabel="compute fraction",
        ylabel="val/loss_exit",
        title="Seed 001: loss at the exits vs compute",
    )
    section.add_figure("early_exit", path, "seed 001 trade-off", src.root)
    return section


def _front_rows(front: pd.DataFrame, label: str) -> list[list[str]]:
    front = front.sort_values("model/bits_total")
    return [
        [label, f"{row['val/acc']:.4f}", f"{row['model/bits_total']:,.0f}"]
        for _, row in front.iterrows()
    ]


def seed000(src: Sources) -> Section:
    """Accuracy against total bits: the learned bit-widths' front, the search's, the widths."""
    from orchestrator.front_compare import compare_fronts
    from orchestrator.layer_plots import bit_widths_plot

    section = Section("seed000", "Seed 000: accuracy against total bits", [])
    learned, searched = src.results("bit_budget"), src.results("mixed_precision")
    if learned is None:
        section.lines += ["", not_run("bit_budget")]
        return section
    objectives = [("val/acc", "max"), ("model/bits_total", "min")]
    tables = {"bit-budget (learned bit-widths)": learned.completed_trials()}
    if searched is not None:
        tables["mixed-precision (Optuna search)"] = searched.completed_trials()
    both = f" and {src.describe('mixed_precision')}" if searched is not None else ""
    section.lines += [
        "",
        f"From {src.describe('bit_budget')}{both}. Pareto fronts of (final "
        "`val/acc`, `model/bits_total`):",
        "",
    ]
    rows = _front_rows(learned.pareto(), "bit-budget (learned)")
    if searched is not None:
        rows += _front_rows(searched.pareto(), "mixed-precision (searched)")
    section.lines += markdown_table(["front", "val/acc", "total bits"], rows)
    if searched is None:
        section.lines += ["", not_run("mixed_precision")]
    else:
        section.lines += ["", _dominance(learned.pareto(), searched.pareto())]
    path = src.figure("seed000_fronts")
    compare_fronts(tables, objectives, path, title="Seed 000: learned vs searched bit-widths")
    section.add_figure("bit_budget", path, "seed 000 fronts", src.root)
    if searched is not None:
        section.figures.setdefault("mixed_precision", []).append(path)
    front = learned.pareto().sort_values("model/bits_total")
    ids = list(front["trial_id"])[:6]
    widths = src.figure("seed000_learned_bits")
    title = "Learned per-layer bit-widths (front trials, fewest bits first)"
    bit_widths_plot(learned.completed_trials(), widths, trial_ids=ids, title=title)
    section.add_figure("bit_budget", widths, "seed 000 learned bit-widths", src.root)
    return section


def _dominance(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """How many points of each front the other front dominates."""

    def dominated(p: pd.Series, front: pd.DataFrame) -> bool:
        acc, bits = p["val/acc"], p["model/bits_total"]
        return any(
            q["val/acc"] >= acc
            and q["model/bits_total"] <= bits
            and (q["val/acc"] > acc or q["model/bits_total"] < bits)
            for _, q in front.iterrows()
        )

    da = sum(dominated(p, b) for _, p in a.iterrows())
    db = sum(dominated(p, a) for _, p in b.iterrows())
    return (
        f"The search's front dominates {da} of the {len(a)} learned-front points; the learned "
        f"front dominates {db} of the {len(b)} searched-front points."
    )
