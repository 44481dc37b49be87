"""The bitsweep console script."""

from __future__ import annotations

import subprocess
import sys

from orchestrator import __version__


def test_version_and_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"bitsweep {__version__}"
    assert __version__ == "0.1.0"
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli"], capture_output=True, text=True, check=True
    )
    assert "usage: bitsweep" in out.stdout
