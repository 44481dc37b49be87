"""BitTransformerLM (seed 004): reversible-block memory against depth, bit LM vs byte LM quality.

Part 1, memory: each (depth, reversible) cell runs in a fresh subprocess that builds the float bit
LM, then runs one forward and backward at a size where activations dominate the parameters. Two
figures per cell: the bytes of the tensors autograd keeps for backward after the forward (unique
storages, through ``torch.autograd.graph.saved_tensors_hooks``: the activation memory, exact),
and the process's peak resident-set growth over the forward + backward (``ru_maxrss`` of
``resource.getrusage``, from after a tiny warm-up forward/backward; glibc's mmap threshold is
fixed with ``MALLOC_MMAP_THRESHOLD_`` so freed tensors leave the RSS at once; includes parameter
gradients and backward's temporaries). Reversible should be flat in depth,
the standard stack linear.

Part 2, quality: the byte LM and the bit LM trained by the same loop (``trainables.loop.train``) on
pydocs, ternary, the same steps, batch and bytes per window (the bit LM sees 9 bits per byte), at
(nearly) equal parameter counts: the bit LM has no 256-entry embedding or head, so it is given the
width that matches the byte LM's total parameters. Reported: ``val/bpb`` of both (bits per byte of
validation text; the bit LM's is the sum of its 9 bit cross-entropies per byte) and wall time.

``python -m benchmarks.bench_bit_lm`` (``--quick``: shallower depths and fewer steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import write_result

_CHILD = r"""
import json, resource, sys, torch
torch.set_num_threads(1)
from trainables.models import BitLM, BitLMConfig
depth, reversible, batch, t, d = (int(a) for a in sys.argv[1:6])
torch.manual_seed(0)
model = BitLM(BitLMConfig(d_model=d, n_layers=depth, n_heads=4, seq_len=t,
                          reversible=bool(reversible)))
bits = torch.randint(0, 2, (batch, t))
seen, saved = set(), 0
def pack(x):
    global saved
    key = (x.untyped_storage().data_ptr(), x.untyped_storage().nbytes())
    if key not in seen and not isinstance(x, torch.nn.Parameter):
        seen.add(key)
        saved += key[1]
    return x
model(bits[:1, :9], bits[:1, :9]).task_loss.backward()  # load kernels and autograd first
model.zero_grad(set_to_none=True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
    out = model(bits, bits)
out.task_loss.backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"saved_mib": saved / 2**20, "rss_growth_mib": (peak - base) / 1024}))
"""


def memory_cell(depth: int, reversible: bool, batch: int, t: int, d: int) -> dict[str, float]:
    """One (depth, reversible) measurement in a fresh interpreter."""
    args = [str(depth), str(int(reversible)), str(batch), str(t), str(d)]
    # a fixed mmap threshold: glibc then returns every freed large block at once, so the peak
    # RSS follows the live tensors instead of the allocator's high-water mark
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _params(arch: str, d_model: int, n_layers: int, seq_bytes: int) -> int:
    from trainables.build import build_float_model, initial_architecture

    cfg = _run_config(arch, d_model, n_layers, seq_bytes, steps=1)
    architecture = initial_architecture(cfg, None)  # type: ignore[arg-type]  # an LM reads no data
    return sum(p.numel() for p in build_float_model(architecture).parameters())


def _run_config(arch: str, d_model: int, n_layers: int, seq_bytes: int, steps: int) -> Any:
    from trainables.config import RunConfig

    seq = seq_bytes * 9 if arch == "bit_lm" else seq_bytes
    model = {"arch": arch, "d_model": d_model, "n_layers": n_layers, "n_heads": 4, "seq_len": seq}
    data: dict[str, Any] = {
        "model": model,
        "quant": {"scheme": "ternary"},
        "data": {"eval_batches": 8},
        "train": {"steps": steps, "eval_every": steps, "batch_size": 16, "lr": 3e-3,
                  "threads": 1},
    }  # fmt: skip
    if arch == "bit_lm":
        data["telemetry"] = {"gen_bytes": 2, "gen_samples": 1, "retries": 0}
    return RunConfig.from_dict(data)


def quality(steps: int, seq_bytes: int, n_layers: int, byte_width: int) -> dict[str, Any]:
    """Byte LM vs bit LM at (nearly) equal parameters and equal steps; see the module doc."""
    from trainables.loop import train

    target = _params("byte_lm", byte_width, n_layers, seq_bytes)
    widths = range(8, 4 * byte_width + 1, 4)
    bit_width = min(widths, key=lambda w: abs(_params("bit_lm", w, n_layers, seq_bytes) - target))
    rows: dict[str, Any] = {}
    for arch, width in (("byte_lm", byte_width), ("bit_lm", bit_width)):
        cfg = _run_config(arch, width, n_layers, seq_bytes, steps)
        start = time.perf_counter()
        result = train(cfg)
        rows[arch] = {
            "d_model": width,
            "params": _params(arch, width, n_layers, seq_bytes),
            "val_bpb": result.metrics["val/bpb"],
            "seconds": time.perf_counter() - start,
            "tokens_per_step": 16 * cfg.model.seq_len,
        }
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both parts; returns the JSON payload (with its markdown)."""
    depths = [1, 2, 4, 8] if args.quick else [1, 2, 4, 8, 16]
    batch, t, d = 8, 288, 64
    memory = {
        f"{depth}/{'reversible' if rev else 'standard'}": memory_cell(depth, rev, batch, t, d)
        for depth in depths
        for rev in (False, True)
    }
    steps = 150 if args.quick else args.steps
    q = quality(steps, seq_bytes=32, n_layers=2, byte_width=64)
    shape = {"batch": batch, "bits": t, "d_model": d, "steps": steps}
    return {"memory": memory, "quality": q, "setting": shape,
            "markdown": render(depths, memory, q, shape, args.quick)}  # fmt: skip


def render(
    depths: list[int],
    memory: dict[str, dict[str, float]],
    q: dict[str, Any],
    shape: dict[str, int],
    quick: bool,
) -> str:
    """The BENCHMARKS.md section."""
    lines = [
        "## 7. BitTransformerLM (seed 004): reversible memory, bit LM vs byte LM"
        + (" (quick setting)" if quick else ""),
        "",
        f"Reversible vs standard blocks, float bit LM, batch {shape['batch']} x {shape['bits']} "
        f"bits, d_model {shape['d_model']}, one forward + backward, each cell a fresh process. "
        "`saved` = bytes autograd keeps for backward after the forward (exact, unique storages); "
        "`peak RSS growth` = `ru_maxrss` growth over forward + backward (includes gradients, "
        "temporaries and allocator slack).",
        "",
        "| depth | saved, standard (MiB) | saved, reversible (MiB) "
        "| peak RSS growth, standard (MiB) | peak RSS growth, reversible (MiB) |",
        "|---|---|---|---|---|",
    ]
    for depth in depths:
        s, r = memory[f"{depth}/standard"], memory[f"{depth}/reversible"]
        lines.append(
            f"| {depth} | {s['saved_mib']:.1f} | {r['saved_mib']:.1f} | "
            f"{s['rss_growth_mib']:.1f} | {r['rss_growth_mib']:.1f} |"
        )
    byte, bit = q["byte_lm"], q["bit_lm"]
    lines += [
        "",
        f"Bit LM vs byte LM on pydocs, ternary, {shape['steps']} steps of 16 windows of 32 bytes "
        "(the bit LM's windows are 288 bits), nearly equal parameter counts; `val/bpb` is bits "
        "per byte of validation text for both (the bit LM pays the 9 bit cross-entropies of each "
        "byte, parity included):",
        "",
        "| model | d_model | params | val/bpb | wall time (s) |",
        "|---|---|---|---|---|",
        f"| byte_lm | {byte['d_model']} | {byte['params']:,} | {byte['val_bpb']:.3f} | "
        f"{byte['seconds']:.0f} |",
        f"| bit_lm | {bit['d_model']} | {bit['params']:,} | {bit['val_bpb']:.3f} | "
        f"{bit['seconds']:.0f} |",
        "",
        NOTES,
    ]
    return "\n".join(lines) + "\n"


NOTES = """The reversible stack keeps only the last pair of streams for backward, so its saved
activations do not grow with depth; the standard stack keeps every block's. Peak RSS growth
follows the same shape but adds what backward itself allocates (one block's recomputation for
the reversible stack, parameter gradients for both). At equal parameters and steps the bit LM
is behind the byte LM: it must learn byte boundaries and compose 9 predictions per byte from
9x as many positions, each step costing ~9x the attention positions. Wall times were measured on
a shared, loaded 2-core machine: compare within one run only."""


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shallower depths, 150 steps")
    parser.add_argument("--steps", type=int, default=400, help="training steps of part 2")
    payload = run(parser.parse_args())
    print(f"wrote {write_result('bench_bit_lm', payload)}")


if __name__ == "__main__":
    main()
