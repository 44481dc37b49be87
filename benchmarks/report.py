"""Render BENCHMARKS.md from ``benchmarks/results/*.json``: ``python -m benchmarks.report``.

Each result file carries a ``markdown`` field (the benchmark's own table and notes); this script
adds the command, date and machine of each, in a fixed order.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import RESULTS_DIR

ORDER = [
    "bench_quant_layers", "bench_orchestration", "bench_search", "bench_packing",
    "bench_ddp_scaling", "bench_deployed", "bench_bit_lm", "bench_tracking_load",
    "bench_sweep_load",
]  # fmt: skip
TARGET = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = """# Benchmarks

Benchmarks are not tests: nothing in the test suite asserts a time. Each one measures its baseline
in the same run and reports ratios (the machines are noisy; an absolute time alone means little),
repeats enough to give a median and a spread (p10..p90), and writes `benchmarks/results/*.json`.
`make bench` runs them all and regenerates this file; each section names its own command.
"""


def render() -> str:
    """The whole BENCHMARKS.md text."""
    parts = [HEADER]
    records = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS_DIR.glob("*.json"))}
    for name in [*ORDER, *sorted(set(records) - set(ORDER))]:
        record = records.get(name)
        if record is None:
            continue
        m = record.get("machine", {})
        parts.append(record.get("markdown", f"## {name}\n").rstrip() + "\n")
        parts.append(
            f"_Command: `{record['command']}` — {record['date']} — {m.get('cpus')} CPUs, "
            f"torch {m.get('torch')} ({m.get('torch_threads')} threads), Python {m.get('python')}, "
            f"commit {m.get('git_commit', '?')}._\n"
        )
    return "\n".join(parts)


def main() -> None:
    """Write BENCHMARKS.md."""
    TARGET.write_text(render())
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
