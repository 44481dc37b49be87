"""The ``bitsweep`` command line: the argument parser and :func:`main`.

The subcommands live in :mod:`orchestrator.cli_sweep` (run, resume, sync, validate, presets,
show) and :mod:`orchestrator.cli_results` (list, best, report and the cluster's jobs); ``export``
in :mod:`orchestrator.exporting`. Exit codes (:mod:`orchestrator.errors`): 0 success, 2 bad input
(one readable message, no traceback), 1 the sweep itself failed, 130 interrupted, 143 stopped by
SIGTERM (both can be resumed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .cli_results import (
    cmd_best,
    cmd_jobs,
    cmd_list,
    cmd_logs,
    cmd_report,
    cmd_status,
    cmd_stop,
    cmd_submit,
)
from .cli_sweep import (
    RUN_USAGE,
    cmd_presets,
    cmd_resume,
    cmd_run,
    cmd_show,
    cmd_sync,
    cmd_validate,
    command_path,
    interrupted_code,
)
from .errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    UserError,
    UserInputError,
)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "RUN_USAGE",
    "UserError",
    "build_parser",
    "command_path",
    "main",
]


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
    """Entry point of the ``bitsweep`` console script; returns the exit code.

    Every user mistake derives from :class:`~trainables.errors.UserInputError` (the core's config
    and data errors) or :class:`~orchestrator.errors.UserError` (the orchestrator's, itself a
    ``UserInputError``): it prints one line and exits 2.
    """
    parser = build_parser()
    args = _parse(parser, list(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_OK
    try:
        return args.func(args)
    except (UserInputError, UserError) as err:
        print(f"bitsweep: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return interrupted_code()
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


if __name__ == "__main__":
    sys.exit(main())
