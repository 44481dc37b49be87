"""The ``bitsweep`` command line.

Exit codes: 0 success, 2 bad input (one readable message, no traceback), 1 the sweep itself
failed, 130 interrupted, 143 stopped by SIGTERM (both can be resumed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_TERMINATED = 143  # SIGTERM: stopped like Ctrl+C (128 + 15)


class UserError(Exception):
    """A mistake in what the user asked for: printed as one line, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from orchestrator.jobs import JobError
    from orchestrator.spec import SweepSpecError
    from trainables.config import ConfigError
    from trainables.data import DataError

    errors: list[type[BaseException]] = [
        UserError,
        SweepSpecError,
        ConfigError,
        DataError,
        JobError,
    ]
    errors.append(FileNotFoundError)
    from orchestrator.locking import SweepLockedError

    errors.append(SweepLockedError)
    from orchestrator.digests import TamperedStateError

    errors.append(TamperedStateError)
    from orchestrator.preflight import StateFileError

    errors.append(StateFileError)
    try:
        from orchestrator.tracking import TrackingUnreachableError

        errors.append(TrackingUnreachableError)
    except ImportError:
        pass
    return tuple(errors)


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


def _print_outcome(outcome: Any, spec: Any) -> None:
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


def _interrupted(spec: Any) -> int:
    sweep = spec.sweep_id or spec.name
    hint = f"{command_path('bitsweep')} resume {sweep} --storage {spec.storage.path}"
    print(f"\ninterrupted; finished trials are kept. Continue with: {hint}")
    return _interrupted_code()


def _interrupted_code() -> int:
    """130 for Ctrl+C, 143 when a SIGTERM asked this driver to stop (a scheduler's or `kill`)."""
    from orchestrator.exits import received_sigterm

    return EXIT_TERMINATED if received_sigterm() else EXIT_INTERRUPTED


RUN_USAGE = """usage: bitsweep run SPEC|PRESET [KEY=VALUE ...] [--name NAME] [--verbose]
       bitsweep run --continue NAME

  SPEC|PRESET   a sweep YAML file or a preset (bitsweep presets lists them)
  KEY=VALUE     dotted overrides, options and overrides in any order

example:
  bitsweep run demo train.steps=50 search.num_samples=4 --name quick-demo
"""


def _check_env_uri(spec: Any) -> None:
    """A tracking URI from MLFLOW_TRACKING_URI gets the same scheme check as tracking.uri."""
    import os

    from orchestrator.uris import tracking_scheme_problem

    env = os.environ.get("MLFLOW_TRACKING_URI")
    if spec.tracking.uri is None and env:
        problem = tracking_scheme_problem(env)
        if problem:
            raise UserError(f"MLFLOW_TRACKING_URI: {problem}")


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
    _print_outcome(outcome, spec)
    return EXIT_OK


def _continue(args: argparse.Namespace) -> int:
    """``run [SPEC ...] --continue NAME``: resume NAME; a SPEC given too must match it."""
    from orchestrator.runner import SweepInterruptedError, load_saved_spec, run_sweep
    from orchestrator.spec import load_sweep

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
    try:
        outcome = run_sweep(spec, address=args.address, resume=True, verbose=args.verbose)
    except (KeyboardInterrupt, SweepInterruptedError):
        return _interrupted(spec)
    _print_outcome(outcome, spec)
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
    from orchestrator.runner import SweepInterruptedError, load_saved_spec, run_sweep

    spec = load_saved_spec(args.name, args.storage)
    try:
        outcome = run_sweep(spec, address=args.address, resume=True, verbose=args.verbose)
    except (KeyboardInterrupt, SweepInterruptedError):
        return _interrupted(spec)
    _print_outcome(outcome, spec)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    """``bitsweep list``: past sweeps in the tracking store, newest first."""
    from orchestrator.identity import list_sweeps

    rows = list_sweeps(args.tracking_uri, args.experiment)
    if not rows:
        print(f"no sweeps in experiment {args.experiment!r}")
        return EXIT_OK
    import pandas as pd

    print(pd.DataFrame(rows).to_string(index=False))
    return EXIT_OK


def cmd_best(args: argparse.Namespace) -> int:
    """``bitsweep best NAME [--export FILE]``: the best trial; its sweep file with --export."""
    from orchestrator.export import export_best
    from orchestrator.results import load_sweep

    results = load_sweep(args.sweep, tracking_uri=args.tracking_uri, experiment=args.experiment)
    try:
        row = results.best(args.metric)
    except ValueError as err:
        raise UserError(str(err)) from None
    metric = args.metric or results.objectives[0][0]
    print(f"best {metric} of sweep {results.name}: {row[metric]:.6g} "
          f"(trial {row['trial_id']}, run {row['run_id']}, {row['status']})")  # fmt: skip
    for key in results.searched_keys():
        if key in row:
            print(f"  {key} = {row[key]}")
    if args.export:
        try:
            path = export_best(results, args.export, args.metric)
        except ValueError as err:
            raise UserError(str(err)) from None
        print(f"wrote {path}: run it with {command_path('bitsweep')} run {path}")
    return EXIT_OK


def cmd_sync(args: argparse.Namespace) -> int:
    """``bitsweep sync NAME``: replay MLflow writes a sweep buffered while MLflow was away."""
    from orchestrator.runner import load_saved_spec
    from orchestrator.sync import sync_sweep

    outcome = sync_sweep(args.name, args.storage)
    if outcome is not None:
        _print_outcome(outcome, load_saved_spec(args.name, args.storage))
    return EXIT_OK


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


def cmd_validate(args: argparse.Namespace) -> int:
    """``bitsweep validate SPEC``: check a sweep file (and its data) without running it."""
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


def cmd_report(args: argparse.Namespace) -> int:
    """``bitsweep report NAME|PARENT_RUN_ID``: print the ablation matrices and Pareto front."""
    from orchestrator.report import print_report

    return print_report(args.sweep, tracking_uri=args.tracking_uri, experiment=args.experiment,
                        out_dir=args.out)  # fmt: skip


def cmd_submit(args: argparse.Namespace) -> int:
    """``bitsweep submit SPEC|PRESET [KEY=VALUE ...] --address URL [--wait]``."""
    from orchestrator import jobs
    from orchestrator.spec import load_sweep

    spec = load_sweep(args.spec, args.overrides)
    client, job_id = jobs.submit(
        spec,
        address=args.address,
        ship_project=args.ship_project,
        python=args.python,
        job_id=args.job_id,
    )
    print(f"submitted sweep {spec.name} as job {job_id}")
    if not args.wait:
        print(f"follow it with: bitsweep logs {job_id} --follow")
        return EXIT_OK
    status = jobs.wait(client, job_id)
    print(f"job {job_id}: {status}")
    return EXIT_OK if status == "SUCCEEDED" else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    """``bitsweep status JOB``: the job's status and message."""
    from orchestrator import jobs

    info = jobs.client(args.address).get_job_info(args.job)
    print(f"{args.job}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    """``bitsweep logs JOB [--follow]``: the job's driver output."""
    from orchestrator import jobs

    client = jobs.client(args.address)
    if args.follow:
        jobs.wait(client, args.job)
    else:
        print(client.get_job_logs(args.job), end="")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    """``bitsweep stop JOB``: ask the cluster to stop the job."""
    from orchestrator import jobs

    stopped = jobs.client(args.address).stop_job(args.job)
    print(f"{args.job}: {'stop requested' if stopped else 'already finished'}")
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    """``bitsweep jobs``: the cluster's jobs, newest first."""
    from orchestrator import jobs

    listed = jobs.client(args.address).list_jobs()
    listed.sort(key=lambda j: j.start_time or 0, reverse=True)
    for job in listed:
        sweep = (job.metadata or {}).get("bitsweep.sweep", "-")
        print(f"{job.submission_id or job.job_id}  {job.status.value:<9}  sweep {sweep}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="bitsweep",
        description="Sweeps and scaling of quantization-aware training on Ray, logged to MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"bitsweep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        return p

    run = add("run", cmd_run, "run a sweep file or preset (each run is a new sweep)")
    run.add_argument(
        "spec", nargs="?", help="a sweep YAML file or a preset name (see `bitsweep presets`)"
    )
    run.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.steps=50"
    )
    run.add_argument("--name", help="the sweep's name (default: the preset, file stem or name:)")
    run.add_argument(
        "--continue",
        dest="continue_name",
        metavar="NAME",
        help="continue the saved sweep NAME (an id, or the newest of that name) instead",
    )
    run.add_argument("--storage", help="with --continue: the sweep's storage.path")
    run.add_argument(
        "--address", help="a Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)"
    )
    run.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    resume = add("resume", cmd_resume, "continue an interrupted sweep")
    resume.add_argument("name", help="the sweep's id, or its name (the newest sweep of it)")
    resume.add_argument("--storage", default="bitsweep_results", help="the sweep's storage.path")
    resume.add_argument("--address", help="a Ray cluster address")
    resume.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    sync = add("sync", cmd_sync, "replay the MLflow writes a sweep buffered while MLflow was away")
    sync.add_argument("name", help="the sweep's name (as `resume` takes it)")
    sync.add_argument("--storage", default="bitsweep_results", help="the sweep's storage.path")
    validate = add("validate", cmd_validate, "check a sweep file without running it")
    validate.add_argument("spec")
    validate.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    add("presets", cmd_presets, "list the shipped presets")
    show = add("show", cmd_show, "print a preset's YAML")
    show.add_argument("preset")
    report = add("report", cmd_report, "print a sweep's ablation matrices and Pareto front")
    report.add_argument("sweep", help="the sweep name or its MLflow parent run id")
    report.add_argument(
        "--tracking-uri", help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db"
    )
    report.add_argument("--experiment", default="bitsweep")
    report.add_argument("--out", default=".", help="where to write the plots")
    listing = add("list", cmd_list, "list past sweeps: name, id, date, status, best, parent run")
    best = add("best", cmd_best, "print a sweep's best trial; --export writes it as a sweep file")
    best.add_argument("sweep", help="the sweep's name or id, or its MLflow parent run id")
    best.add_argument("--export", metavar="FILE", help="write the best trial as a one-run sweep")
    best.add_argument("--metric", help="the objective to rank by (default: the first)")
    for p in (listing, best):
        p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
        p.add_argument("--experiment", default="bitsweep")

    address_help = "the head's dashboard, e.g. http://HEAD:8265 (default: BITSWEEP_DASHBOARD_URL)"
    submit = add("submit", cmd_submit, "send a sweep to a running Ray cluster as a job")
    submit.add_argument("spec", help="a sweep YAML file or a preset name")
    submit.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    submit.add_argument("--address", help=address_help)
    submit.add_argument("--wait", action="store_true", help="follow the job's logs until it ends")
    ship_help = "upload bitsweep's packages with the job (for a cluster without bitsweep)"
    submit.add_argument("--ship-project", action="store_true", help=ship_help)
    submit.add_argument("--python", help="the cluster-side interpreter (default: Ray's own there)")
    submit.add_argument("--job-id", help="a submission id (default: generated)")
    for name, fn, text in (("status", cmd_status, "a job's status"),
                           ("logs", cmd_logs, "a job's output"),
                           ("stop", cmd_stop, "stop a job")):  # fmt: skip
        p = add(name, fn, text)
        p.add_argument("job", help="the submission id printed by submit")
        p.add_argument("--address", help=address_help)
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="stream until the job ends")
    jobs_cmd = add("jobs", cmd_jobs, "list the cluster's jobs")
    jobs_cmd.add_argument("--address", help=address_help)
    from orchestrator.exporting import add_export_command  # issue 19: transformers / GGUF

    add_export_command(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bitsweep`` console script; returns the exit code."""
    parser = build_parser()
    args = _parse(parser, list(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_OK
    try:
        return args.func(args)
    except _user_errors() as err:
        print(f"bitsweep: error: {_one_message(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return _interrupted_code()
    except Exception as err:  # the sweep itself failed: say so without a traceback wall
        from orchestrator.runner import SweepFailedError

        label = "sweep failed" if isinstance(err, SweepFailedError) else f"{type(err).__name__}"
        verbose = getattr(args, "verbose", False)
        from orchestrator.exits import one_line

        print(f"bitsweep: {label}: {str(err) if verbose else one_line(err)}", file=sys.stderr)
        if verbose:
            raise
        return EXIT_FAILED


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; a subcommand's options and positionals (overrides) mix in any order."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if argv and actions and argv[0] in actions[0].choices:
        sub = actions[0].choices[argv[0]]
        args = sub.parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    return parser.parse_args(argv)


def _one_message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err)


if __name__ == "__main__":
    # Run through the package module, not __main__'s copy, so that the error classes other modules
    # import from orchestrator.cli are the ones main() catches.
    from orchestrator.cli import main as package_main

    sys.exit(package_main())
