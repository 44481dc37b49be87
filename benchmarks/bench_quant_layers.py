"""Benchmark 1: the cost of a fake-quantized training step versus ``nn.Linear``.

One step is ``zero_grad``, forward, backward (a fixed random upstream gradient) and an AdamW
step, on a ``[2048, width]`` input at widths 256, 512 and 1024 (square layers), on CPU with the
machine's threads. The layers: ``BitLinear`` (8-bit activations), ``HBitLinear`` (8-bit),
``LSQLinear`` (2-bit weights, 2-bit activations) and ``AdaptiveBitLinear`` (8 bits, input
quantized too), each also in its straightforward "before" formulation
(:mod:`benchmarks.reference_layers`), all timed round-robin with ``nn.Linear`` in the same run.

The input requires grad (a layer inside a network, the common case); the full run also times the
first-layer case (``--skip-leaf`` leaves it out), where ``nn.Linear`` skips the input-gradient
matmul (one of three) and the quantizer cost weighs more.

Peak memory: measured in a fresh subprocess with glibc's mmap threshold at 64 KiB, so every
tensor buffer is its own mapping and the resident set follows live tensor memory; for each
(layer, width), after building the layer and input, the peak resident set (``VmHWM``, reset
through ``/proc/self/clear_refs``) over three steps minus the resident set before them is the
step's peak: gradients, AdamW state and the tensors saved for backward.

Run: ``python -m benchmarks.bench_quant_layers`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import Stats, interleaved, write_result
from benchmarks.reference_layers import (
    RefAdaptiveBitLinear,
    RefBitLinear,
    RefHBitLinear,
    RefLSQLinear,
)
from trainables.quant import AdaptiveBitLinear, BitLinear, HBitLinear, LSQLinear

TOKENS = 2048
WIDTHS = (256, 512, 1024)
TARGETS = {"BitLinear": 1.15, "HBitLinear": 1.3, "LSQLinear": 1.3, "AdaptiveBitLinear": 1.3}
LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "nn.Linear": lambda w: nn.Linear(w, w),
    "BitLinear": lambda w: BitLinear(w, w, act_bits=8),
    "HBitLinear": lambda w: HBitLinear(w, w, act_bits=8),
    "LSQLinear": lambda w: LSQLinear(w, w, weight_bits=2, act_bits=2, act_signed=True),
    "AdaptiveBitLinear": lambda w: AdaptiveBitLinear(w, w, init_bits=8.0, quantize_input=True),
    "BitLinear (before)": lambda w: RefBitLinear(w, w, act_bits=8),
    "HBitLinear (before)": lambda w: RefHBitLinear(w, w, act_bits=8),
    "LSQLinear (before)": lambda w: RefLSQLinear(w, w, weight_bits=2, act_bits=2, act_signed=True),
    "AdaptiveBitLinear (before)": lambda w: RefAdaptiveBitLinear(
        w, w, init_bits=8.0, quantize_input=True
    ),
}


def make_step(name: str, width: int, *, input_grad: bool, seed: int = 0) -> Callable[[], None]:
    """A closure running one training step of layer ``name`` at ``width``."""
    torch.manual_seed(seed)
    layer = LAYERS[name](width).train()
    x = torch.randn(TOKENS, width, requires_grad=input_grad)
    grad = torch.randn(TOKENS, width)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(grad)
        optimizer.step()

    step()  # LSQ initializes its step sizes at the first forward; AdamW allocates its state
    return step


def time_width(width: int, names: list[str], *, input_grad: bool, rounds: int) -> dict[str, Stats]:
    """Round-robin timing of every layer's step at ``width``."""
    steps = {name: make_step(name, width, input_grad=input_grad) for name in names}
    return interleaved(steps, rounds=rounds, warmup=2)


def _rss_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"{field}:\s+(\d+)", text)
    return int(match.group(1)) if match else 0


def probe_memory(name: str, width: int) -> float:
    """In this process: the peak resident memory (MiB) of three steps, above the setup.

    Needs every tensor buffer in its own mapping (see :func:`measure_memory`), so that freed
    tensors leave the resident set at once and cells measured one after another do not mix.
    """
    gc.collect()
    torch.manual_seed(0)
    layer = LAYERS[name](width).train()
    x = torch.randn(TOKENS, width, requires_grad=True)
    grad = torch.randn(TOKENS, width)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-4)
    with torch.no_grad():
        layer(x)  # LSQ step initialization, outside the measured window
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    before, file_before = _rss_kib("VmRSS"), _rss_kib("RssFile")
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(grad)
        optimizer.step()
    # library code paged in during the steps is resident too: not tensor memory
    paged_in = _rss_kib("RssFile") - file_before
    peak = _rss_kib("VmHWM") - paged_in
    del layer, x, grad, optimizer
    return (peak - before) / 1024


def measure_memory(cells: list[tuple[str, int]]) -> dict[tuple[str, int], float | None]:
    """Peak step memory (MiB) of each (layer, width), measured in one fresh subprocess.

    glibc's mmap threshold is set to 64 KiB there, so the resident set follows live tensor
    memory; None where ``/proc/self/clear_refs`` (Linux) is not available.
    """
    if not Path("/proc/self/clear_refs").exists():
        return dict.fromkeys(cells)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    spec = json.dumps([[name, width] for name, width in cells])
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_quant_layers", "--probe", spec],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return dict.fromkeys(cells)
    values = json.loads(result.stdout.strip().splitlines()[-1])
    return {cell: float(v) for cell, v in zip(cells, values, strict=True)}


def profile_summary(name: str, width: int, steps: int = 5) -> list[tuple[str, float]]:
    """The five ops with the most self CPU time over ``steps`` steps, as (op, share %)."""
    from torch.profiler import ProfilerActivity, profile

    step = make_step(name, width, input_grad=True)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        (e.key.removeprefix("aten::"), 100.0 * e.self_cpu_time_total / total) for e in events[:5]
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time, measure memory and profile; return the result payload."""
    widths = (256,) if args.quick else WIDTHS
    rounds = 5 if args.quick else args.rounds
    names = list(LAYERS)
    timing: dict[str, dict[int, dict[str, Stats]]] = {"hidden": {}}
    leaf = not (args.quick or args.skip_leaf)
    modes = [("hidden", True)] + ([("leaf", False)] if leaf else [])
    for mode, input_grad in modes:
        timing[mode] = {}
        for width in widths:
            stats = time_width(width, names, input_grad=input_grad, rounds=rounds)
            timing[mode][width] = stats
            base = stats["nn.Linear"]
            print(f"[{mode}] width {width}: nn.Linear {base.median * 1e3:.2f} ms")
            for name in names[1:]:
                s = stats[name]
                print(f"    {name:28s} {s.ratio_to(base):5.2f}x  (spread {s.spread:.2f})")
    mem_widths = (256,) if args.quick else widths
    mem_names = names[:2] if args.quick else names
    measured = measure_memory([(name, width) for width in mem_widths for name in mem_names])
    memory: dict[int, dict[str, float | None]] = {
        width: {name: measured[(name, width)] for name in mem_names} for width in mem_widths
    }
    for width, cells in memory.items():
        print(f"memory width {width}: " + ", ".join(f"{k} {v}" for k, v in cells.items()))
    profiles = {}
    if not args.quick:
        for name in names[:5]:
            profiles[name] = profile_summary(name, 512)
    return {
        "tokens": TOKENS,
        "widths": list(widths),
        "timing": {
            mode: {str(w): {n: s for n, s in per.items()} for w, per in by_width.items()}
            for mode, by_width in timing.items()
        },
        "ratios": {
            mode: {
                str(w): {n: s.ratio_to(per["nn.Linear"]) for n, s in per.items()}
                for w, per in by_width.items()
            }
            for mode, by_width in timing.items()
        },
        "memory_mib": {str(w): m for w, m in memory.items()},
        "profile_width_512": profiles,
        "markdown": render(timing, memory, profiles, rounds, quick=args.quick),
    }


def _fmt_ratio(s: Stats, base: Stats) -> str:
    return f"{s.ratio_to(base):.2f}x ({s.p10 / base.median:.2f}–{s.p90 / base.median:.2f})"


def render(
    timing: dict[str, dict[int, dict[str, Stats]]],
    memory: dict[int, dict[str, float | None]],
    profiles: dict[str, list[tuple[str, float]]],
    rounds: int,
    *,
    quick: bool,
) -> str:
    """The BENCHMARKS.md section."""
    lines = ["## 1. Fake-quantized layer cost", ""]
    if quick:
        lines += ["_Quick smoke run: one width, few rounds; not the recorded figures._", ""]
    lines += [
        f"A training step (zero_grad, forward, backward with a fixed upstream gradient, AdamW) on "
        f"`[{TOKENS}, width]` float32 inputs that require grad (a layer inside a network), "
        f"square layers, CPU, all threads. Median step time over {rounds} round-robin rounds, "
        "as a ratio to `nn.Linear` in the same run, with p10–p90 (relative to `nn.Linear`'s "
        "median). LSQ: 2-bit weights, 2-bit signed activations. Adaptive: 8 bits, input "
        "quantized too. Before = the straightforward STE formulation the layers had before "
        "this benchmark (`benchmarks/reference_layers.py`); after = the layers now.",
        "",
    ]
    hidden = timing["hidden"]
    widths = sorted(hidden)
    header = "| layer | target | " + " | ".join(f"width {w}: before | after" for w in widths)
    lines += [header + " | met |", "|" + "---|" * (3 + 2 * len(widths))]
    lines.append(
        "| nn.Linear (ms per step) | | "
        + " | ".join(f"{hidden[w]['nn.Linear'].median * 1e3:.2f} ms | " for w in widths)
        + " |"
    )
    for name, target in TARGETS.items():
        cells = []
        met = True
        for w in widths:
            base = hidden[w]["nn.Linear"]
            after = hidden[w][name]
            cells.append(f"{_fmt_ratio(hidden[w][f'{name} (before)'], base)} | ")
            cells[-1] += f"**{_fmt_ratio(after, base)}**"
            met = met and after.ratio_to(base) <= target
        lines.append(
            f"| {name} | ≤ {target:.2f}x | " + " | ".join(cells) + f" | {'yes' if met else 'no'} |"
        )
    if "leaf" in timing:
        leaf = timing["leaf"]
        lines += [
            "",
            "First layer (input without grad: `nn.Linear` skips one of its three matmuls), "
            "after / before:",
            "",
            "| layer | " + " | ".join(f"width {w}" for w in widths) + " |",
            "|---|" + "---|" * len(widths),
        ]
        for name in TARGETS:
            cells = [
                f"{leaf[w][name].ratio_to(leaf[w]['nn.Linear']):.2f}x / "
                f"{leaf[w][name + ' (before)'].ratio_to(leaf[w]['nn.Linear']):.2f}x"
                for w in widths
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if memory:
        mem_widths = sorted(memory)
        lines += [
            "",
            "Peak memory of a step above the layer and its input (MiB; fresh process per cell, "
            "resident-set peak with every tensor buffer mmapped), after (before):",
            "",
            "| layer | " + " | ".join(f"width {w}" for w in mem_widths) + " |",
            "|---|" + "---|" * len(mem_widths),
        ]
        for name in ["nn.Linear", *TARGETS]:
            cells = []
            for w in mem_widths:
                after = memory[w].get(name)
                before = memory[w].get(f"{name} (before)")
                cell = "n/a" if after is None else f"{after:.1f}"
                if before is not None:
                    cell += f" ({before:.1f})"
                cells.append(cell)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if profiles:
        lines += [
            "",
            "Profile (torch.profiler, width 512, 5 steps): the five aten ops with the most self "
            "CPU time, share of the step:",
            "",
            "| layer | top ops |",
            "|---|---|",
        ]
        for name, ops in profiles.items():
            lines.append(
                f"| {name} | " + ", ".join(f"{op} {share:.0f}%" for op, share in ops) + " |"
            )
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


NOTES = """What changed (`trainables/quant`), all with the same values (bit for bit where the
formula allows, see `tests/test_quant_equivalence.py`) and the same gradients to 1e-6:

- Straight-through estimator as autograd functions (`_ActivationSTE`, `_TernarySTE`): forward
  returns the quantized tensor itself, backward the incoming gradient; `x + (q - x).detach()`
  cost two extra full-size tensors and passes per quantized operand.
- Quantizers computed on one temporary modified in place (`round_`, `clamp_`, `mul_`,
  `div_`), the per-token absmax from `amax`/`amin` (no `abs()` copy; `torch.aminmax` over a dim
  measured ~10x slower), the clip of 8-bit activations skipped where it provably cannot change
  a value (float32/64: `|x s| <= Q_P (1 + u)^3 < Q_P + 0.5`).
- H-BitLinear's Hadamard transform as Kronecker factors (`H_1024 = H_32 ⊗ H_32`: two small
  batched matmuls, ~`2 sqrt(n)` multiply-adds per element) instead of a dense `[256, 256]`
  matmul or ten butterfly levels each allocating through `torch.stack` (autograd recorded
  every level); the butterfly `fwht` (used for the stored weights) now runs between two
  preallocated buffers, bit for bit the same, with one autograd node.
- LSQ: forward keeps the in-range mask and `d v_q / d s` instead of `v / s`, so backward is one
  product and one sum instead of rebuilding masks and `where` chains (~12 passes).
- Adaptive bit-width: the absmax quantizer as one autograd function with the bit-width gradient
  written out (`sum grad (codes - v/s)` through `s(b)`); the autograd graph cost five temporaries
  and summed two large terms that nearly cancel (so the new gradient is also more accurate).
- The weight quantization runs once per forward and is not cached across steps: the weights
  change at every optimizer step, so a cache would never hit in training and would hold an extra
  float copy of every weight (and defeat FSDP2 sharding).
- Not used: `torch.compile` (it would fuse these elementwise chains, but costs tens of seconds
  of compilation per trial and shape, against the 2 s orchestration budget of benchmark 2).

What remains: each quantized operand still costs a few memory passes (reduction for the scale,
quantize, and for LSQ/adaptive the saved tensors for backward) next to the three matmuls, so
the ratio is largest at width 256, where a matmul is cheapest relative to the `[2048, width]`
elementwise work; LSQ at 2/2 bits and the adaptive layer pay for learnable scales (extra saved
tensors and a reduction in backward)."""


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one width, few rounds")
    parser.add_argument("--rounds", type=int, default=15, help="round-robin rounds per width")
    parser.add_argument(
        "--skip-leaf", action="store_true", help="do not time the first-layer (leaf input) case"
    )
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # JSON [[layer, width], ...]
    args = parser.parse_args()
    if args.probe:
        cells = [(name, int(width)) for name, width in json.loads(args.probe)]
        probe_memory(*cells[0])  # one-time allocations of the first steps land here
        print(json.dumps([probe_memory(*cell) for cell in cells]))
        return
    payload = run(args)
    path = write_result("bench_quant_layers", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
