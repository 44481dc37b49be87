"""The ``bitsweep`` subcommands that start, continue or check a sweep: run, resume, sync,
validate, presets and show.

Each handler imports what it needs when it runs: ``validate`` (and ``presets``/``show``) import
only the sweep-spec and config modules, never Ray or torch.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from orchestrator.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    UserError,
)

RUN_USAGE = """usage: bitsweep run SPEC|PRESET [KEY=VALUE ...] [--name NAME] [--verbose]
       bitsweep run --continue NAME

  SPEC|PRESET   a sweep YAML file or a preset (bitsweep presets lists them)
  KEY=VALUE     dotted overrides, options and overrides in any order

example:
  bitsweep run demo train.steps=50 search.num_samples=4 --name quick-demo
"""


def command_path(name: str) -> str:
    """How to type the console script ``name`` installed beside this Python so that it runs as
    printed: the bare name when that is what PATH finds, else its path (relative to the working
    directory when inside it, e.g. ``.venv/bin/mlflow``)."""
    import os
    import shutil
    from pathlib import Path

    beside = Path(sys.executable).parent / name
    if not beside.exists():
        return name
    found = shutil.which(name)
    if found and os.path.realpath(found) == os.path.realpath(beside):
        return name
    try:
        return str(beside.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(beside.absolute())


def print_outcome(outcome: Any, spec: Any) -> None:
    """Print a finished sweep's counts, its best trial or Pareto front, and where to look next."""
    from orchestrator.naming import sweep_counts

    searched = [k for k in spec.search.space]
    metrics = [o.metric for o in spec.search.objective_list]
    c = sweep_counts(outcome.trials)
    print()
    print(f"sweep {outcome.sweep_id or outcome.name}: {c['trials']} trials: {c['finished']} "
          f"finished, {c['stopped_early']} stopped early, {c['failed']} failed")  # fmt: skip
    if outcome.pareto is not None and len(outcome.pareto):
        columns = [c for c in ["trial_id", *metrics, *searched] if c in outcome.pareto.columns]
        print(f"Pareto front ({len(outcome.pareto)} trials):")
        print(outcome.pareto[columns].to_string(index=False))
    elif outcome.best:
        for metric, best in (outcome.best.get("best") or {}).items():
            where = f"trial {best['trial_id']}, run {best['run_id']}"
            print(f"best {metric}: {best['value']:.6g} ({where})")
            for key in searched:
                if key in best.get("params", {}):
                    print(f"  {key} = {best['params'][key]}")
    print(f"MLflow parent run: {outcome.parent_run_id} (tracking URI {outcome.tracking_uri})")
    if outcome.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in outcome.tracking_uri:
        mlflow = command_path("mlflow")
        print(f"open the UI with: {mlflow} ui --backend-store-uri {outcome.tracking_uri}")
    else:
        print(f"open {outcome.tracking_uri} in a browser")
    print(f"results and checkpoints: {outcome.experiment_path}")
    if spec.search.algorithm == "optuna" and "://" not in spec.storage_path:
        study = f"sqlite:///{outcome.experiment_path}/optuna.db"
        sweep = outcome.sweep_id or outcome.name
        dashboard = command_path("optuna-dashboard")
        print(f"Optuna study {sweep}: {study} (browse it with: {dashboard} {study})")


def interrupted_code() -> int:
    """130 for Ctrl+C, 143 when a SIGTERM asked this driver to stop (a scheduler's or `kill`)."""
    from orchestrator.exits import received_sigterm

    return EXIT_TERMINATED if received_sigterm() else EXIT_INTERRUPTED


def _interrupted(spec: Any) -> int:
    sweep = spec.sweep_id or spec.name
    hint = f"{command_path('bitsweep')} resume {sweep} --storage {spec.storage.path}"
    print(f"\ninterrupted; finished trials are kept. Continue with: {hint}")
    return interrupted_code()


def _check_env_uri(spec: Any) -> None:
    """A tracking URI from MLFLOW_TRACKING_URI gets the same scheme check as tracking.uri."""
    import os

    from orchestrator.uris import tracking_scheme_problem

    env = os.environ.get("MLFLOW_TRACKING_URI")
    if spec.tracking.uri is None and env:
        problem = tracking_scheme_problem(env)
        if problem:
            raise UserError(f"MLFLOW_TRACKING_URI: {problem}")


def _check_data(spec: Any) -> None:
    """Fail before Ray starts when the data a sweep names is missing."""
    run = spec.run
    if run.model.arch == "hf_causal_lm":  # a local model directory that holds a causal LM
        from trainables.models.hf_lm import check_hf_model_dir

        check_hf_model_dir(run.model.hf_path)
    if run.task.kind == "lm" and run.data.source not in ("pydocs", "selfgen"):
        from trainables.data import resolve_source_paths

        resolve_source_paths(run.data.source)
    if run.task.kind == "vision" and run.data.source == "cifar10":
        from trainables.data import load_cifar10

        load_cifar10(run.data.path, max_train=1, max_test=1)


def cmd_run(args: argparse.Namespace) -> int:
    """``bitsweep run SPEC|PRESET [KEY=VALUE ...]``: a new sweep (a new id), or with
    ``--continue NAME`` the saved sweep NAME continued."""
    from orchestrator.identity import with_new_id
    from orchestrator.runner import SweepInterruptedError, run_sweep
    from orchestrator.spec import load_sweep

    if args.continue_name:
        return _continue(args)
    if not args.spec:
        print(RUN_USAGE, end="", file=sys.stderr)
        return EXIT_BAD_INPUT
    spec = with_new_id(load_sweep(args.spec, args.overrides), args.name)
    _check_env_uri(spec)
    _check_data(spec)
    print(f"sweep {spec.sweep_id}: {spec.search.algorithm}, {spec.search.num_samples} samples, "
          f"tracking {spec.tracking.resolved_uri()}")  # fmt: skip
    try:
        outcome = run_sweep(spec, address=args.address, verbose=args.verbose)
    except (KeyboardInterrupt, SweepInterruptedError):
        return _interrupted(spec)
    print_outcome(outcome, spec)
    return EXIT_OK


def _continue(args: argparse.Namespace) -> int:
    """``run [SPEC ...] --continue NAME``: resume NAME; a SPEC given too must match it."""
    from orchestrator.spec import load_sweep
    from orchestrator.sweep_folder import load_saved_spec

    storage = args.storage
    given = None
    if args.spec:
        given = load_sweep(args.spec, args.overrides)
        storage = args.storage or given.storage.path
    spec = load_saved_spec(args.continue_name, storage or "bitsweep_results")
    if given is not None:
        differ = _differences(given.to_document(), spec.to_document())
        if differ:
            raise UserError(
                f"--continue {args.continue_name}: the saved sweep differs in "
                f"{', '.join(differ[:8])}; continuing keeps the saved settings, so drop the "
                "spec and overrides (bitsweep resume NAME), or start a new sweep without --continue"
            )
    print(f"continuing sweep {spec.sweep_id or spec.name}")
    return _resume(spec, args)


def _resume(spec: Any, args: argparse.Namespace) -> int:
    """Continue the saved sweep ``spec`` (``resume`` and ``run --continue``)."""
    from orchestrator.runner import SweepInterruptedError, run_sweep

    try:
        outcome = run_sweep(spec, address=args.address, resume=True, verbose=args.verbose)
    except (KeyboardInterrupt, SweepInterruptedError):
        return _interrupted(spec)
    print_outcome(outcome, spec)
    return EXIT_OK


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    from trainables.config import flatten

    skip = ("name", "sweep_id", "description", "preset", "storage.path")
    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [k for k in keys if k not in skip and fa.get(k) != fb.get(k)]


def cmd_resume(args: argparse.Namespace) -> int:
    """``bitsweep resume NAME``: continue an interrupted sweep (a sweep id, or the newest sweep
    of that name)."""
    from orchestrator.sweep_folder import load_saved_spec

    spec = load_saved_spec(args.name, args.storage)
    return _resume(spec, args)


def cmd_sync(args: argparse.Namespace) -> int:
    """``bitsweep sync NAME``: replay MLflow writes a sweep buffered while MLflow was away."""
    from orchestrator.sweep_folder import load_saved_spec
    from orchestrator.sync import sync_sweep

    outcome = sync_sweep(args.name, args.storage)
    if outcome is not None:
        print_outcome(outcome, load_saved_spec(args.name, args.storage))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """``bitsweep validate SPEC``: check a sweep file (and its data) without running it; imports
    neither Ray nor torch for a sweep on the built-in data."""
    from orchestrator.spec import load_sweep

    spec = load_sweep(args.spec, args.overrides)
    _check_env_uri(spec)
    _check_data(spec)
    search = spec.search
    print(f"{args.spec}: valid sweep {spec.name!r} ({search.algorithm}, {search.num_samples} "
          f"samples, {len(search.space)} searched keys)")  # fmt: skip
    return EXIT_OK


def cmd_presets(args: argparse.Namespace) -> int:
    """``bitsweep presets``: list the shipped presets."""
    from search_spaces import preset_descriptions

    descriptions = preset_descriptions()
    width = max(len(n) for n in descriptions)
    for name, description in descriptions.items():
        print(f"{name:<{width}}  {description}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    """``bitsweep show PRESET``: print a preset's YAML."""
    from search_spaces import load_preset_text, preset_names

    if args.preset not in preset_names():
        raise UserError(f"unknown preset {args.preset!r}; presets: {', '.join(preset_names())}")
    print(load_preset_text(args.preset), end="")
    return EXIT_OK
