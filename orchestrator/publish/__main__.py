"""``python -m orchestrator.publish``: what ``make results`` runs (see the package docstring)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from orchestrator.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, UserError
from trainables.errors import UserInputError


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.publish",
        description="Rerun the studies of a scale file and regenerate RESULTS.md and its figures.",
    )
    parser.add_argument("--scale", default="results/scale.yaml", help="the scale file")
    parser.add_argument("--out", default="RESULTS.md", help="the markdown file to write")
    parser.add_argument("--figures", default="results/figures", help="where the PNGs go")
    parser.add_argument(
        "--store",
        default="results/store",
        help="folder of the sweeps' results, the MLflow sqlite store and the "
        "base model (ignored by git)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="an MLflow server or store instead of <store>/mlflow.db",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="regenerate RESULTS.md from the newest sweeps in the store",
    )
    parser.add_argument("--address", default=None, help="a running Ray cluster to use")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the studies (unless ``--report-only``), then write RESULTS.md; the exit code."""
    args = parse(argv)
    from orchestrator.publish.book import write_book
    from orchestrator.publish.run_studies import run_studies
    from orchestrator.publish.scale import load_scale
    from orchestrator.publish.sources import Sources
    from orchestrator.publish.studies import STUDY_NAMES
    from orchestrator.runner import SweepFailedError

    try:
        scale = load_scale(args.scale, STUDY_NAMES)
        store = Path(args.store).resolve()
        out = Path(args.out).resolve()
        if not out.parent.is_dir():
            raise UserError(f"--out {args.out!r}: folder {str(out.parent)!r} does not exist")
        store.mkdir(parents=True, exist_ok=True)
        uri = args.tracking_uri or f"sqlite:///{store / 'mlflow.db'}"
        parents: dict[str, str] = {}
        if not args.report_only:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            import ray

            from orchestrator.ray_session import connect_ray

            started = connect_ray(args.address, verbose=False)
            try:
                parents = run_studies(
                    scale, tracking_uri=uri, storage=store / "runs", work=store / "work"
                )
            finally:
                if started:
                    ray.shutdown()
        src = Sources(
            tracking_uri=uri,
            scale=scale,
            figures=Path(args.figures).resolve(),
            root=out.parent,
            scale_path=args.scale,
            parents=parents,
        )
        command = f"make results RESULTS_SCALE={args.scale}"
        sections = write_book(src, out, command=command)
    except UserInputError as err:  # a scale file, sweep or store problem: one line
        print(f"bitsweep results: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SweepFailedError as err:
        print(f"bitsweep results: {err}", file=sys.stderr)
        return EXIT_FAILED
    figures = sum(len(v) for s in sections for v in s.figures.values())
    print(f"wrote {out} ({len(sections)} sections, {figures} figure links) from {uri}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
