"""RESULTS.md sections of the quantization seeds: 002 (bin regularization), 003 (gradual
ternary, BitNet fine-tuning), 001 (Hadamard x early exit x layer dropout), 000 (bit-widths)."""

from __future__ import annotations

import math

import pandas as pd

from orchestrator.publish import figures
from orchestrator.publish.sources import Section, Sources, not_run
from orchestrator.publish.stats import Cell, cells, markdown_table, verdict

BR_CLAIMS = [  # seed 002's comparison matrix: stability W-only = W+A stable > A-only > moving
    ("W+A stable", "W+A moving target"),
    ("W-only", "W+A moving target"),
    ("W-only", "no BR"),
    ("W+A stable", "no BR"),
    ("W-only", "A-only"),
]


def _br_part(src: Sources, name: str, section: Section, data: str) -> None:
    r = src.results(name)
    if r is None:
        section.lines += ["", f"### {data}", "", not_run(name)]
        return
    by = {k[0]: c for k, c in cells(r.completed_trials(), ["scenario"], "val/acc").items()}
    order = sorted(by, key=lambda k: -by[k].mean if by[k].n else math.inf)
    section.lines += [
        "",
        f"### {data}",
        "",
        f"From {src.describe(name)}; final `val/acc`, mean ± std over training seeds.",
        "",
    ]
    section.lines += markdown_table(["scenario", "val/acc"], [[k, by[k].text()] for k in order])
    section.lines += ["", "The seed's ordering (its stability column), here:", ""]
    for a, b in BR_CLAIMS:
        if a in by and b in by:
            section.lines.append(f"- {a} vs {b}: {verdict(by[a], by[b], 'max')}")
    path = figures.bars(
        {k: by[k] for k in order},
        src.figure(f"seed002_{name}"),
        ylabel="val/acc",
        title=f"Seed 002 at 2 bits: {data}",
    )
    section.add_figure(name, path, f"seed 002 {data}", src.root)


def seed002(src: Sources) -> Section:
    """The five BR scenarios at 2 bits: accuracy per scenario and the seed's ordering."""
    section = Section("seed002", "Seed 002: bin regularization at 2 bits", [])
    _br_part(src, "br_scenarios", section, "digits")
    _br_part(src, "br_scenarios_cifar", section, "CIFAR-10 (local batches)")
    return section


def seed003(src: Sources) -> Section:
    """Gradual vs immediate ternary vs full precision at two widths; BitNet fine-tuning."""
    section = Section("seed003", "Seed 003: gradual full precision -> ternary", [])
    r = src.results("gradual")
    section.lines += ["", "### Lambda warm-up on the byte LM, two widths", ""]
    if r is None:
        section.lines.append(not_run("gradual"))
    else:
        table = r.completed_trials()
        by = cells(table, ["scenario", "model.d_model"], "val/bpb")
        widths = sorted({w for _, w in by})
        scenarios = sorted({s for s, _ in by})
        section.lines += [
            f"From {src.describe('gradual')}; final `val/bpb` (lower is better), "
            "mean ± std over training seeds, at equal steps.",
            "",
        ]
        section.lines += markdown_table(
            ["scenario", *[f"d_model {w}" for w in widths]],
            [[s, *[by.get((s, w), Cell(())).text() for w in widths]] for s in scenarios],
        )
        section.lines.append("")
        for w in widths:
            g, i = by.get(("gradual ternary", w)), by.get(("immediate ternary", w))
            if g and i:
                section.lines.append(
                    f"- d_model {w}: gradual vs immediate ternary: {verdict(g, i, 'min')}"
                )
        if len(widths) >= 2:
            small, large = widths[0], widths[-1]
            fp, tern = by.get(("full precision", small)), by.get(("gradual ternary", large))
            if fp and tern:
                section.lines.append(
                    f"- does ternary catch up at {large // small}x width? gradual ternary at "
                    f"d_model {large} vs full precision at d_model {small}: "
                    f"{verdict(tern, fp, 'min')}"
                )
        history = r.history("val/bpb")
        panels = {
            f"d_model {w}": {
                s: list(table[(table["scenario"] == s) & (table["model.d_model"] == w)]["trial_id"])
                for s in scenarios
            }
            for w in widths
        }
        path = figures.mean_curves(
            history,
            {},
            src.figure("seed003_gradual"),
            metric="val/bpb",
            title="Seed 003: val/bpb over training",
            panels=panels,
        )
        section.add_figure("gradual", path, "seed 003 warm-up curves", src.root)
    _finetune(src, section)
    return section


def _finetune(src: Sources, section: Section) -> None:
    r = src.results("bitnet_finetune")
    section.lines += ["", "### `bitnet-finetune`: converting a Hugging Face model", ""]
    if r is None:
        section.lines.append(not_run("bitnet_finetune"))
        return
    t = r.completed_trials()
    start, after = Cell(_values(t, "val/loss_start")), Cell(_values(t, "val/loss"))
    packed = Cell(_values(t, "model/packed_bytes"))
    params = Cell(_values(t, "model/params"))
    section.lines += [
        f"From {src.describe('bitnet_finetune')}. The base model is a small Llama pretrained "
        "here on pydocs in full precision (no download is allowed); it self-generates its data, "
        "is converted (ternary linears, RMSNorm after attention) and fine-tuned with the lambda "
        "warm-up, as seed 003 does.",
        "",
    ]
    fp32 = Cell(tuple(4.0 * v for v in params.values))
    ratio = fp32.mean / packed.mean if packed.n and packed.mean else math.nan
    section.lines += markdown_table(
        ["measure", "value"],
        [
            ["val/loss of the converted model before fine-tuning (lambda = 1)", start.text()],
            ["val/loss after fine-tuning", after.text()],
            ["before - after (nats)", f"{start.mean - after.mean:.4f}" if start.n else "-"],
            ["packed model bytes", packed.text(0)],
            ["fp32 bytes of the same parameters", fp32.text(0)],
            ["fp32 / packed", f"{ratio:.2f}x"],
        ],
    )


def _values(table: pd.DataFrame, column: str) -> tuple[float, ...]:
    if column not in table:
        return ()
    return tuple(float(v) for v in table[column] if v is not None and not math.isnan(float(v)))
