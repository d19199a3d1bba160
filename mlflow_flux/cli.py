"""``mlflow-flux``: one command, with subcommands ``train``, ``sweep``, ``atlas`` and ``compare``.

    mlflow-flux train --lr 0.01 --epochs 50
    mlflow-flux sweep --lrs 0.01,0.001,0.0001 --epochs 1000
    mlflow-flux atlas                                  # adam and sgd x 3 lrs x 3 seeds, 1000 epochs
    mlflow-flux compare --sweep <parent run id> --output report/

Bad input is one line on stderr and exit code 2, before any work starts; Ctrl-C is exit code 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Mapping, Sequence

from .errors import FluxError, InvalidParameter, UsageError
from .interrupts import exit_code, stop_on_signals, stop_with_parent
from .settings import RecorderSettings, Settings, describe
from .study.config import ATLAS_DEFAULTS, PER_VARIANT, SWEPT, SweepSettings, TrainConfig
from .traces import mlflow_adapter

__all__ = ["main"]

DESCRIPTION = "mlflow-flux: train the built-in study, run its sweep, and compare watched runs."



class _Parser(argparse.ArgumentParser):
    """argparse that takes whole option names only (``--lr`` is not ``--lrs``) and turns its errors into one line
    that :func:`main` prints, exit code 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _unknown_options(args: argparse.Namespace, unknown: list[str]) -> FluxError:
    """One error for options the command does not take; the swept ones of ``sweep`` say what to pass instead."""
    option = next((item for item in unknown if item.startswith("--")), unknown[0])
    name = option.lstrip("-").split("=", 1)[0].replace("-", "_")
    if args.command in ("sweep", "atlas") and name in SWEPT:
        position = unknown.index(option)
        value = option.split("=", 1)[1] if "=" in option else (unknown[position + 1:] or [""])[0]
        return InvalidParameter(name, value, f"the sweep varies it: pass {name}s= instead")
    return UsageError(f"unknown option {' '.join(unknown)} for 'mlflow-flux {args.command}' "
                      f"(see mlflow-flux {args.command} --help)")


def _fail_the_mlflow_run(message: str) -> None:
    """Under ``mlflow run`` (which made a run for this process), bad input ends that run FAILED with the reason."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    import mlflow
    from mlflow.tracking import MlflowClient

    from .traces.lifecycle import RunEnd, conclude
    from .traces.server import check_reachable

    try:
        check_reachable(mlflow.get_tracking_uri())
        client = MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            conclude(client, run_id, None, RunEnd(run_id, failure=message))
    except Exception:  # noqa: BLE001 -- the one-line error is already printed; the run is MLflow's to end then
        pass


def _keep_killed(run_id: str, mlflow_run_pid: int) -> None:
    """Under ``mlflow run``: keep the KILLED status we set, which ``mlflow run`` would overwrite with FAILED."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from .traces.lifecycle import keep_killed_past_mlflow_run
    from .traces.server import check_reachable

    try:
        check_reachable(mlflow.get_tracking_uri())
        if MlflowClient().get_run(run_id).info.status == "KILLED":
            keep_killed_past_mlflow_run(run_id, mlflow_run_pid)
    except Exception:  # noqa: BLE001 -- the run keeps MLflow's FAILED; our tag still says why it stopped
        pass


def _add_options(parser: argparse.ArgumentParser, settings: type[Settings], names: Sequence[str],
                 defaults: Mapping[str, str] | None = None) -> None:
    """One option per setting, its help derived from the declaration. Every option is a string here: the settings
    parse and check them (one error naming the setting, exit 2), so the CLI and the MLproject agree."""
    for name in names:
        spec = settings.spec(name)
        default = (defaults or {}).get(name)
        value = spec.kind.parse(name, default) if default is not None else None
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="VALUE", help=describe(spec, value))


def _add_train_options(parser: argparse.ArgumentParser, skip: Sequence[str] = (),
                       defaults: Mapping[str, str] | None = None) -> None:
    """The study's settings first, then the recorder's."""
    names = [*TrainConfig.study_names(), *RecorderSettings.names()]
    _add_options(parser, TrainConfig, [name for name in names if name not in skip], defaults)


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, str]:
    return {name: value for name in names if (value := getattr(args, name, None)) is not None}



def _train(args: argparse.Namespace) -> int:
    from .study.config import parse_train_config

    config = parse_train_config(_given(args, TrainConfig.names()))
    from .study.train import train

    result = train(config, progress=not args.quiet)
    from .study.progress import PROGRESS_LABEL_ENV

    label = os.environ.get(PROGRESS_LABEL_ENV) or f"run {result.run_id}"
    print(f"{label}: finished, final loss {result.final_loss:.6f} after {result.epochs} epochs")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    import time

    from .study.config import parse_sweep_config

    started = time.monotonic()
    names = [name for name in TrainConfig.names() if name not in PER_VARIANT]
    given = _given(args, [*SweepSettings.names(), *names])
    config = parse_sweep_config({**(ATLAS_DEFAULTS if args.command == "atlas" else {}), **given})
    # The first line comes before MLflow and torch are imported (seconds on a busy machine).
    print(f"mlflow-flux: {config.name}: {config.variants} variants (optimizers {','.join(config.optimizers)}; "
          f"activations {','.join(config.activations)}; recycles {','.join(config.recycles)}; "
          f"lrs {','.join(f'{lr:g}' for lr in config.lrs)}; "
          f"seeds {','.join(map(str, config.seeds))}), starting...", flush=True)
    from .study.sweep import run_sweep

    result = run_sweep(config)
    report = None
    if config.report and len(result.failed) + len(result.kept) < len(result.variants):
        from .report.pipeline import compare

        report = compare(result.sweep_run_id)  # failed variants, and those whose trace is kept, show up as skipped
        print_report_summary(report)
    _print_closing(config.name, result, report, time.monotonic() - started)
    if not result.ok:
        print(f"mlflow-flux: sweep {result.sweep_run_id} FAILED: {len(result.failed)} of "
              f"{len(result.variants)} variants failed", file=sys.stderr)
        for reason in result.failed.values():
            print(f"  {reason}", file=sys.stderr)
        return 1
    if result.kept:
        from .errors import KeptLocally

        print(f"mlflow-flux: sweep {result.sweep_run_id} finished, but the results of {len(result.kept)} of "
              f"{len(result.variants)} variants are kept locally (above: where, and the command that uploads them)",
              file=sys.stderr)
        return KeptLocally.exit_code
    return 0


def _print_closing(name: str, result, report, seconds: float) -> None:
    """Where to look next: the sweep's runs in the UI, and the report."""
    import mlflow

    from .report.render import EXPLORER_FILE, REPORT_DIR
    from .study.progress import format_duration
    from .traces import links

    uri = mlflow.get_tracking_uri()
    experiment_id = result.experiment_id
    state = "FAILED" if not result.ok else "finished"
    lines = [f"{name} {state}: {len(result.variants) - len(result.failed)} of {len(result.variants)} variants in "
             f"{format_duration(seconds)} (run {result.sweep_run_id})",
             f"  runs:   {links.sweep_runs_url(uri, experiment_id, result.sweep_run_id)}"]
    if report is not None and report.run_id:
        lines.append(f"  report: {links.artifact_url(uri, experiment_id, report.run_id, 'report/report.html')}")
        if EXPLORER_FILE in report.files:
            explorer = links.artifact_url(uri, experiment_id, report.run_id, f"{REPORT_DIR}/{EXPLORER_FILE}")
            lines.append(f"  explore: {explorer}")
    lines += [f"  kept locally: {kept}" for kept in result.kept.values()]
    command = links.ui_command(uri)
    if command:
        lines.append(f"  (serve the UI first: {command})")
    print("\n".join(lines), flush=True)


def _compare(args: argparse.Namespace) -> int:
    from .report.options import SELECTIONS, CompareSettings
    from .report.pipeline import compare

    options = CompareSettings.from_strings(_given(args, CompareSettings.names()))
    chosen = [f"--{name}" for name in SELECTIONS if getattr(options, name) is not None]
    if len(chosen) > 1:
        raise UsageError(f"pass only one of --sweep, --experiment, --filter, not {' and '.join(chosen)}")
    report = compare(options.sweep, experiment=options.experiment, filter_string=options.filter,
                     output=options.output, log_run=not args.no_log, window=options.window, tau=options.tau,
                     group_by=options.group_by, loss_key=options.loss_key)
    print_report_summary(report)
    return 0


def _explore(args: argparse.Namespace) -> int:
    from .explorer.runs import explore

    path = explore(args.run_ids, output=args.output, group_by=args.group_by or None)
    print(f"explorer page written to {path}")
    return 0


def _query(args: argparse.Namespace) -> int:
    from .errors import InvalidParameter
    from .sql.engine import QueryResult, query

    output = args.output or None
    if output is not None and not output.endswith((".parquet", ".csv")):
        raise InvalidParameter("output", output, "expected a file ending in .parquet or .csv")
    result = QueryResult()
    runs = [r.strip() for r in args.runs.split(",") if r.strip()] if args.runs else None
    table = query(args.sql, experiment=args.experiment or None, filter_string=args.filter or None, runs=runs,
                  as_arrow=True, result=result)
    for run_id, why in result.skipped:
        print(f"skipped run {run_id}: {why}", file=sys.stderr)
    if output is None:
        import pandas as pd

        with pd.option_context("display.max_rows", 200, "display.width", 160):
            print(table.to_pandas().to_string(index=False))
    elif output.endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(table, output)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, output)
    if output is not None:
        print(f"{table.num_rows} rows written to {output} ({len(result.runs)} runs)")
    return 0


def _upload(args: argparse.Namespace) -> int:
    from .traces.recovery import upload_kept

    uploaded = upload_kept(args.run_id, args.directory)
    print(f"uploaded {len(uploaded)} file(s) into run {args.run_id}: {', '.join(uploaded)}")
    return 0


def _percent(value: float) -> str:
    """A fraction as a percentage; "n/a" where the reading is not defined (e.g. firing after tanh)."""
    return "n/a" if value != value else f"{value:.1%}"


def print_report_summary(report) -> None:
    groups = report.groups
    print(f"compared {len(report.runs)} runs ({len(report.skipped)} skipped)")
    facet = report.facet if report.facet and report.facet in groups.columns[:1] else None  # per facet value first
    key = groups.columns[1 if facet else 0]  # the grouping parameter
    for _, row in groups.iterrows():
        value = row[key]
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        left_out = int(row.get("diverged", 0) or 0)
        diverged = f"; {left_out} of {row['n'] + left_out} diverged, left out" if left_out else ""
        activity = ", ".join(f"{label} {_percent(row[column])}" for label, column in (
            ("participating", "all/participating_frac"), ("frozen", "all/frozen_frac"), ("dead", "all/dead_frac")))
        print(f"  {row[facet] + ' ' if facet else ''}{key} {shown}: final loss {row['loss_final']:.5f}, {activity} "
              f"({row['n']} run{'s' if row['n'] > 1 else ''}{diverged})")
    for claim in report.claims:
        word, _, rest = claim.verdict.partition(" (")  # "inconclusive (n = 1)": the word stands out, not the n
        print(f"  claim ({claim.label}) {claim.text}: {word.upper()}{' (' + rest if rest else ''}")
        for note in claim.notes:
            print(f"    - {note}")
        if claim.depends_on_definition:
            print(f"    - {claim.depends_on_definition}")
    for run_id, name, reason in report.skipped:
        print(f"  skipped {name or run_id}: {reason}")
    if report.run_id:
        print(f"report logged to run {report.run_id} (artifact report/report.html)")
    if report.directory:
        print(f"report written to {report.directory}/report.html")


def _add_sweep_options(sweep: argparse.ArgumentParser, defaults: Mapping[str, str]) -> None:
    _add_options(sweep, SweepSettings, SweepSettings.names(), defaults)
    _add_train_options(sweep, skip=PER_VARIANT, defaults=defaults)
    sweep.set_defaults(func=_sweep)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's default must not overwrite `mlflow-flux --verbose sweep`.
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="also show MLflow's own INFO messages (hidden by default)")
    parser = _Parser(prog="mlflow-flux", description=DESCRIPTION, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{train,sweep,atlas,compare,explore,query,upload}")

    train = sub.add_parser("train", help="train one variant into one MLflow run", parents=[common],
                           description="Train one variant of the built-in study into one MLflow run.")
    _add_train_options(train)
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.set_defaults(func=_train)

    sweep = sub.add_parser("sweep", help="the learning-rate sweep: a parent run and one child per (optimizer, "
                                         "lr, seed)",
                           parents=[common], description="Run the study's sweep: one parent run, one child run "
                                                         "per (optimizer, lr, seed), then the report.")
    _add_sweep_options(sweep, {})
    atlas = sub.add_parser("atlas", help="the map of where the paper's claims hold: the sweep over optimizers, "
                                         "learning rates and seeds", parents=[common],
                           description="The sweep with the atlas's defaults (adam and sgd, three learning rates, "
                                       "three seeds, 1000 epochs), then the report with its verdicts over epochs.")
    _add_sweep_options(atlas, ATLAS_DEFAULTS)

    compare = sub.add_parser("compare", help="the cross-run participation report, from the tracking server",
                             parents=[common], description="Build the cross-run participation report from the "
                                                           "tracking server and log it to a report run.")
    from .report.options import CompareSettings

    _add_options(compare, CompareSettings, CompareSettings.names())  # at most one of --sweep, --experiment, --filter
    compare.add_argument("--no-log", action="store_true", help="do not log a report run")
    compare.set_defaults(func=_compare)

    explore = sub.add_parser("explore", help="the interactive explorer page of runs holding a trace",
                             parents=[common], description="Write the explorer page (one self-contained HTML file) "
                                                           "of one run, or of several side by side.")
    explore.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="runs that hold a trace")
    explore.add_argument("--output", metavar="FILE", help="the page's path (default: flux-explorer-<run>.html here)")
    explore.add_argument("--group-by", metavar="PARAM", help="group several runs by this parameter")
    explore.set_defaults(func=_explore)

    query = sub.add_parser("query", help="SQL over every trace row of many runs (views: traces, runs)",
                           parents=[common], description="Run SQL over the traces of an experiment's runs: the view "
                                                          "traces holds every trace row with its run's id, name, "
                                                          "status and parameters as columns; runs one row per run.")
    query.add_argument("sql", metavar="SQL")
    query.add_argument("--experiment", metavar="NAME", help="the experiment (name or id; default: the current one)")
    query.add_argument("--filter", metavar="FILTER", help="an MLflow filter string over its runs")
    query.add_argument("--runs", metavar="IDS", help="comma-separated run ids instead")
    query.add_argument("--output", metavar="FILE", help="write the rows to FILE (.parquet or .csv) instead of printing")
    query.set_defaults(func=_query)

    upload = sub.add_parser("upload", help="upload what a run kept locally (the command its mlflow_flux.missing "
                                           "tag names)", parents=[common],
                            description="Upload a run's kept spool: every file goes where a normal run has it, the "
                                        "trace's leftover segments are removed from the run, the local copy after.")
    upload.add_argument("run_id", metavar="RUN_ID")
    upload.add_argument("directory", metavar="DIR", help="the kept spool (the run's mlflow_flux.kept_at tag)")
    upload.set_defaults(func=_upload)
    return parser


def _quiet_mlflow(verbose: bool) -> None:
    """MLflow's chatter (INFO lines, database migrations, "View run at ...", download progress bars) is off unless
    --verbose; the variants a sweep starts inherit the settings through MLflow's own environment variables, which it
    reads as it needs them."""
    if verbose:
        os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"
    else:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per artifact read
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run ..." per run ending
    if "mlflow" in sys.modules:  # imported already (under `mlflow run` only its plugin loader did): set it too
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())


def _subject(args: argparse.Namespace) -> str | None:
    """What a command reads or writes, as a permission error names it."""
    experiment = getattr(args, "experiment", None) or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    runs = getattr(args, "run_ids", None) or ([args.run_id] if getattr(args, "run_id", None) else [])
    if getattr(args, "sweep", None):
        return f"sweep {args.sweep}"
    if runs:
        return f"run {', '.join(runs)}"
    return f"experiment {experiment!r}" if experiment else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code: 0 done, 1 failed, 2 bad input, 3 the tracking server was lost (results
    kept locally), 130 Ctrl-C, 143 SIGTERM."""
    stop_with_parent()
    made_by_mlflow_run = os.environ.get("MLFLOW_RUN_ID")  # read now: mlflow.end_run() unsets it
    parent = os.getppid()  # `mlflow run`, when it started us; read now, before it can die
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # MLflow's own import-time warnings (under `python -OO` it warns about its stripped docstrings) are not ours to
    # show: the terminal is for what mlflow-flux says.
    warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
    try:
        with stop_on_signals():  # SIGTERM (a scheduler, `timeout`, `docker stop`) is handled like Ctrl-C
            args, unknown = build_parser().parse_known_args(argv)
            if unknown:
                raise _unknown_options(args, unknown)
            _quiet_mlflow(getattr(args, "verbose", False))
            with mlflow_adapter.auth_errors(what=_subject(args)):  # a 401 or 403 anywhere: one line, its own code
                return args.func(args)
    except FluxError as exc:
        print(f"mlflow-flux: error: {exc}", file=sys.stderr)
        if exc.exit_code == 2:
            _fail_the_mlflow_run(f"bad input: {exc}")
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print("mlflow-flux: interrupted; finished epochs are logged, the runs are marked KILLED", file=sys.stderr)
        if made_by_mlflow_run:
            _keep_killed(made_by_mlflow_run, parent)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
