"""bitsweep's orchestrator: sweep files, Ray Tune + Optuna, MLflow tracking, the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bitsweep")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
