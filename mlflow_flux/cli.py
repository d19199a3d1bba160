"""``mlflow-flux``: one command, with subcommands ``train``, ``sweep`` and ``compare``.

    mlflow-flux train --lr 0.01 --epochs 50
    mlflow-flux sweep --lrs 0.01,0.001,0.0001 --epochs 1000
    mlflow-flux compare --sweep <parent run id> --output report/

Bad input is one line on stderr and exit code 2, before any work starts; Ctrl-C is exit code 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import warnings
from typing import Sequence

from .errors import FluxError
from .study.config import TrainConfig

__all__ = ["main"]

DESCRIPTION = "mlflow-flux: train the built-in study, run its sweep, and compare watched runs."

_SWEPT = ("lr", "seed")


def _add_train_options(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    # Every option is a string here: config.py parses and checks them, so the CLI and MLproject agree.
    for field in dataclasses.fields(TrainConfig):
        if field.name in skip:
            continue
        default = field.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, metavar="VALUE",
                            help=f"default: {shown}")


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, str]:
    return {name: value for name in names if (value := getattr(args, name, None)) is not None}


def _train(args: argparse.Namespace) -> int:
    from .study.config import parse_train_config

    config = parse_train_config(_given(args, [f.name for f in dataclasses.fields(TrainConfig)]))
    from .study.train import train

    result = train(config, progress=not args.quiet)
    print(f"run {result.run_id}: loss/final {result.final_loss:.6f} after {result.epochs} epochs")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .study.sweep import parse_sweep_config, run_sweep

    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in _SWEPT]
    config = parse_sweep_config(_given(args, ["lrs", "seeds", "max_parallel", "report", *names]))
    result = run_sweep(config)
    if config.report and len(result.failed) < len(result.variants):
        from .report.pipeline import compare

        print_report_summary(compare(result.sweep_run_id))  # failed variants show up as skipped
    if not result.ok:
        print(f"mlflow-flux: sweep {result.sweep_run_id} FAILED: {len(result.failed)} of "
              f"{len(result.variants)} variants failed", file=sys.stderr)
        for reason in result.failed.values():
            print(f"  {reason}", file=sys.stderr)
        return 1
    print(f"sweep {result.sweep_run_id}: {len(result.variants)} variants finished")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .report.pipeline import compare
    from .study.config import parse_floats, parse_ints

    window = parse_ints("window", args.window, minimum=2)[0] if args.window is not None else None
    tau = parse_floats("tau", args.tau)[0] if args.tau is not None else None
    report = compare(args.sweep, experiment=args.experiment, filter_string=args.filter, output=args.output,
                     log_run=not args.no_log, window=window, tau=tau)
    print_report_summary(report)
    return 0


def print_report_summary(report) -> None:
    groups = report.groups
    print(f"compared {len(report.runs)} runs ({len(report.skipped)} skipped)")
    for _, row in groups.iterrows():
        print(f"  lr {row['lr']:g}: loss/final {row['loss_final']:.5f}, participating "
              f"{row['all/participating_frac']:.3f}, dead {row['all/dead_frac']:.3f} (n={row['n']})")
    for claim in report.claims:
        print(f"  claim ({claim.name}) {claim.text}: {claim.verdict.upper()}")
    for run_id, name, reason in report.skipped:
        print(f"  skipped {name or run_id}: {reason}")
    if report.run_id:
        print(f"report logged to run {report.run_id} (artifacts: report/report.html)")
    if report.directory:
        print(f"report written to {report.directory}/report.html")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlflow-flux", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sweep,compare}")

    train = sub.add_parser("train", help="train one variant into one MLflow run")
    _add_train_options(train)
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.set_defaults(func=_train)

    sweep = sub.add_parser("sweep", help="the learning-rate sweep: a parent run and one child per (lr, seed)")
    sweep.add_argument("--lrs", metavar="LIST", help="comma-separated learning rates (default: 0.01,0.001,0.0001)")
    sweep.add_argument("--seeds", metavar="LIST", help="comma-separated seeds (default: 0)")
    sweep.add_argument("--max-parallel", dest="max_parallel", metavar="N",
                       help="variants at a time (default: auto, one per core)")
    sweep.add_argument("--report", metavar="BOOL", help="build the comparison report at the end (default: true)")
    _add_train_options(sweep, skip=_SWEPT)
    sweep.set_defaults(func=_sweep)

    compare = sub.add_parser("compare", help="the cross-run participation report, from the tracking server")
    which = compare.add_mutually_exclusive_group()
    which.add_argument("--sweep", metavar="RUN_ID", help="the sweep's parent run (default: the latest sweep)")
    which.add_argument("--experiment", metavar="NAME", help="every variant run of this experiment")
    which.add_argument("--filter", metavar="FILTER", help="an MLflow filter string over variant runs")
    compare.add_argument("--output", metavar="DIR", help="also write the report files here")
    compare.add_argument("--no-log", action="store_true", help="do not log a report run")
    compare.add_argument("--window", metavar="N", help="override each run's window (metrics then differ)")
    compare.add_argument("--tau", metavar="T", help="override each run's tau (metrics then differ)")
    compare.set_defaults(func=_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # MLflow's own import-time warnings (under `python -OO` it warns about its stripped docstrings) are not ours to
    # show: the terminal is for what mlflow-flux says.
    warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FluxError as exc:
        print(f"mlflow-flux: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mlflow-flux: interrupted; finished epochs are logged, the run is marked KILLED", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
