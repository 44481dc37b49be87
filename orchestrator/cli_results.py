"""The ``bitsweep`` subcommands that read finished sweeps and control cluster jobs: list, best,
report, submit, status, logs, stop and jobs (``export`` is :mod:`orchestrator.exporting`)."""

from __future__ import annotations

import argparse

from orchestrator.cli_sweep import command_path
from orchestrator.errors import EXIT_FAILED, EXIT_OK, UserError


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
    from orchestrator.results import load_sweep_results

    results = load_sweep_results(
        args.sweep, tracking_uri=args.tracking_uri, experiment=args.experiment
    )
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
        except (ValueError, OSError) as err:  # OSError: a folder of FILE that does not exist
            raise UserError(str(err)) from None
        print(f"wrote {path}: run it with {command_path('bitsweep')} run {path}")
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
