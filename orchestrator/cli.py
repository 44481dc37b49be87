"""The ``bitsweep`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    """The top-level argument parser (subcommands arrive with the orchestrator)."""
    parser = argparse.ArgumentParser(
        prog="bitsweep",
        description="Sweeps and scaling of quantization-aware training on Ray, logged to MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"bitsweep {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bitsweep`` console script; returns the exit code."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
