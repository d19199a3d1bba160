"""A research team's MLflow, for real: PostgreSQL as the backend store, an S3 endpoint for artifacts (served
through `mlflow server --artifacts-destination s3://...`, read through presigned URLs), MLflow's basic-auth app.

What must hold there (issue "On a team's MLflow"): the sweep end to end; an artifact store that refuses connections
across the end of training loses nothing silently (status, tag, exit code 3, a recovery command that puts every file
where a normal run has it); a wrong password and a missing permission are one line each with their own exit codes;
reads of a trace on S3 fetch only the row groups and columns they need. The stack is started by the tests
(tests/stack.py) and dies with them.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time

import mlflow
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

import mlflow_flux
from mlflow_flux.traces.schema import KEY_COLUMNS, SUMMARY_COLUMNS
from tests.helpers import PYTHON, ROOT, run_cli_concurrently
from tests.stack import BUCKET, TeamStack, credentials, missing_stack

pytestmark = [pytest.mark.stack, pytest.mark.slow]

ALICE = ("alice", "alice-password-1234")
BOB = ("bob", "bob-password-12345678")
TINY = ["--n-samples", "64", "--hidden", "32,8", "--image-size", "16", "--window", "2", "--flush-every", "5"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    why = missing_stack()
    if why and os.environ.get("MLFLOW_FLUX_REQUIRE_STACK") == "1":
        pytest.fail(why)
    if why:
        pytest.skip(why)
    running = TeamStack(tmp_path_factory.mktemp("team")).start()
    running.add_user(*ALICE)
    running.add_user(*BOB)
    yield running
    running.stop()


@pytest.fixture()
def alice(stack, monkeypatch):
    """Alice's session in this process: her credentials, the server, the S3 endpoint."""
    for key, value in stack.client_env(*ALICE).items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(stack.uri)
    yield MlflowClient(stack.uri)
    while mlflow.active_run():
        mlflow.end_run()


def _experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name, artifact_location=artifact_location)


def _env(stack, user: tuple[str, str], experiment: str | None = None) -> dict[str, str]:
    """A user's shell: the server, their credentials and the S3 endpoint; the experiment by name."""
    env = {**os.environ, **stack.client_env(*user), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    if experiment:
        env["MLFLOW_EXPERIMENT_NAME"] = experiment
    return env


def _cli(stack, user: tuple[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*PYTHON, "-m", "mlflow_flux.cli", *args], cwd=ROOT, env=_env(stack, user),
                          capture_output=True, text=True, timeout=timeout)


def _our_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mlflow-flux: error:")]


def test_the_store_down_across_the_end_of_training_keeps_everything_and_says_so(stack, alice):
    """S3 refuses connections from the last epochs of training to after the process ends: the run must say what is
    missing and where it is, exit 3, and the printed command must put every file where a normal run has it."""
    _experiment(alice, "store-down")
    env = {**_env(stack, ALICE, "store-down"), "MLFLOW_FLUX_UPLOAD_TIMEOUT": "10"}
    epochs = 24
    process = subprocess.Popen([*PYTHON, "-m", "mlflow_flux.cli", "train", "--epochs", str(epochs), *TINY],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []
    try:
        for line in process.stderr:
            err.append(line)
            epoch = re.search(rf"epoch (\d+)/{epochs}", line)
            if epoch and int(epoch.group(1)) >= epochs - 8:  # the progress lines skip epochs when they come fast
                stack.s3.gate.close()
            if f"epoch {epochs}/{epochs}" in line:
                trained = time.monotonic()
                break
        rest = process.communicate(timeout=300)[1]
        ended = time.monotonic()
    finally:
        stack.s3.gate.open()
    err = "".join(err) + rest
    assert process.returncode == 3, err[-3000:]
    (line,) = _our_lines(err)
    assert "Traceback" not in err
    assert "traces/traces.parquet" in line and "did not reach the artifact store" in line, line
    # the documented bound: uploads give up upload_timeout (10 s) after training ends; figures and the page are
    # drawn in that time too
    assert ended - trained < 10 + 15, ended - trained
    run_id = re.search(r"mlflow-flux upload (\w+) ", line).group(1)
    run = alice.get_run(run_id)
    assert run.info.status == "FINISHED"
    tag = run.data.tags["mlflow_flux.missing"]
    kept = run.data.tags["mlflow_flux.kept_at"]
    assert "traces/traces.parquet" in tag and f"mlflow-flux upload {run_id} {kept}" in tag
    # load_traces says the trace is not there (or that it holds a part), never a part without a word
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("mlflow_flux").addHandler(handler)
    try:
        part = mlflow_flux.load_traces(run_id)
    except mlflow_flux.FluxError as exc:
        assert "did not reach the artifact store" in str(exc) and "mlflow-flux upload" in str(exc), exc
    else:
        assert set(part.epoch) < set(range(epochs))
        assert any("holds only the closed segments" in m and "mlflow-flux upload" in m for m in messages), messages
    finally:
        logging.getLogger("mlflow_flux").removeHandler(handler)
    # the recovery command, as printed
    done = _cli(stack, ALICE, "upload", run_id, kept)
    assert done.returncode == 0, done.stderr[-3000:]
    trace = mlflow_flux.load_traces(run_id)
    assert set(trace.epoch) == set(range(epochs))
    listed = {a.path for a in alice.list_artifacts(run_id, "traces")}
    assert listed == {"traces/traces.parquet"}  # no stale parts beside it
    figures = {a.path for a in alice.list_artifacts(run_id, "figures")}
    assert "figures/reconstructions.png" in figures and not any("traces/figures" in f for f in figures)
    assert "mlflow_flux.missing" not in alice.get_run(run_id).data.tags


def test_a_sweep_runs_end_to_end_and_a_variant_that_could_not_upload_says_so_everywhere(stack, alice):
    """The sweep end to end on the team's stack, while the store refuses connections across the end of its second
    variant (one at a time): that variant and the parent carry the tag, the sweep exits 3 with the closing block
    naming what is kept, the report (the store is back by then) lists the variant as skipped with the reason, and
    the other variant is whole. MLflow's chatter (its "View run" lines, download bars) stays off."""
    experiment_id = _experiment(alice, "team-sweep")
    env = {**_env(stack, ALICE, "team-sweep"), "MLFLOW_FLUX_UPLOAD_TIMEOUT": "10"}
    epochs = 12
    process = subprocess.Popen([*PYTHON, "-m", "mlflow_flux.cli", "sweep", "--epochs", str(epochs), "--lrs",
                                "0.01,0.001", "--seeds", "0", "--max-parallel", "1", *TINY], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    try:
        for line in process.stdout:
            out.append(line)
            epoch = re.search(rf"variant 2/2 .*: epoch (\d+)/{epochs}", line)
            if epoch and int(epoch.group(1)) >= epochs // 2:  # the progress lines skip epochs when they come fast
                stack.s3.gate.close()
            if "variant 2/2" in line and "finished" in line:
                stack.s3.gate.open()
        process.wait(timeout=300)
    finally:
        stack.s3.gate.open()
    out = "".join(out)
    assert process.returncode == 3, out[-3000:]
    assert "View run" not in out and "Downloading artifacts" not in out, out[-3000:]
    variants = {r.data.tags["mlflow.runName"]: r for r in
                alice.search_runs([experiment_id], "tags.`mlflow_flux.role` = 'variant'")}
    kept = [r for r in variants.values() if "mlflow_flux.missing" in r.data.tags]
    whole = [r for r in variants.values() if "mlflow_flux.missing" not in r.data.tags]
    assert len(variants) == 2 and len(kept) == 1 and {r.info.status for r in variants.values()} == {"FINISHED"}
    assert sorted(set(mlflow_flux.load_traces(whole[0].info.run_id).epoch)) == list(range(epochs))
    (parent,) = alice.search_runs([experiment_id], "tags.`mlflow_flux.role` = 'sweep'")
    assert kept[0].data.tags["mlflow.runName"] in parent.data.tags["mlflow_flux.missing"]
    assert "kept locally:" in out and f"mlflow-flux upload {kept[0].info.run_id}" in out
    assert f"skipped {kept[0].data.tags['mlflow.runName']}: results kept locally" in out, out[-3000:]
    assert "report:" in out and "explore:" in out


def test_a_wrong_password_is_one_line_and_exit_4_everywhere(stack, alice):
    _experiment(alice, "team-sweep")
    wrong = (ALICE[0], "not-her-password-0000")
    expected = f"mlflow-flux: error: not authenticated at {stack.uri}: check MLFLOW_TRACKING_USERNAME"
    commands = (["compare", "--experiment", "team-sweep"], ["train", "--epochs", "2", *TINY],
                ["sweep", "--epochs", "2", "--lrs", "0.01", "--seeds", "0", *TINY],
                ["query", "SELECT count(*) FROM traces", "--experiment", "team-sweep"])
    for args, done in zip(commands, run_cli_concurrently([(args, _env(stack, wrong, "team-sweep"))
                                                           for args in commands])):
        assert done.returncode == 4, (args, done.stderr[-3000:])
        assert _our_lines(done.stderr) == [line for line in done.stderr.splitlines() if line.strip()], args
        assert _our_lines(done.stderr)[0].startswith(expected), (args, done.stderr)
    run_id = alice.search_runs([_experiment(alice, "team-sweep")], max_results=1)[0].info.run_id
    with credentials(*wrong), pytest.raises(mlflow_flux.NotAuthenticated, match="not authenticated at"):
        mlflow_flux.load_traces(run_id)


def test_a_user_without_permission_gets_one_line_and_exit_5(stack, alice):
    experiment_id = _experiment(alice, "team-sweep")
    sweep = alice.search_runs([experiment_id], "tags.`mlflow_flux.role` = 'sweep'", max_results=1)[0].info.run_id
    variant = alice.search_runs([experiment_id], "tags.`mlflow_flux.role` = 'variant'", max_results=1)[0].info.run_id
    cases = ((["compare", "--experiment", "team-sweep"], "experiment 'team-sweep'"),
             (["compare", "--sweep", sweep], f"sweep {sweep}"),
             (["explore", variant, "--output", "/dev/null"], f"run {variant}"),
             (["upload", variant, str(ROOT)], f"run {variant}"))
    for (args, what), done in zip(cases, run_cli_concurrently([(args, _env(stack, BOB)) for args, _ in cases])):
        assert done.returncode == 5, (args, done.stderr[-3000:])
        (line,) = [line for line in done.stderr.splitlines() if line.strip()]
        assert line.startswith(f"mlflow-flux: error: permission denied on {what} at {stack.uri} for user bob"), line
    with credentials(*BOB), pytest.raises(mlflow_flux.PermissionDenied, match=f"on run {variant} .* for user bob"):
        mlflow_flux.load_traces(variant)


@pytest.mark.parametrize("store", ["served", "direct"])
def test_reads_of_a_trace_on_s3_fetch_only_what_they_need(stack, alice, store):
    """Through the server's presigned URL (``--serve-artifacts``) and from a direct ``s3://`` store: the bytes the
    store sent, counted at its door, against the file's size."""
    location = f"s3://{BUCKET}/direct" if store == "direct" else None
    experiment_id = _experiment(alice, f"ranged-{store}", artifact_location=location)
    model = torch.nn.Sequential(torch.nn.Linear(8, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 8))
    with mlflow.start_run(experiment_id=experiment_id) as run:
        with mlflow_flux.watch(model, log_figures=False, explorer=False) as flux:
            for epoch in range(100):
                model(torch.randn(16, 8)).sum().backward()
                flux.end_epoch(epoch)
    run_id = run.info.run_id
    size = next(a.file_size for a in alice.list_artifacts(run_id, "traces") if a.path.endswith("traces.parquet"))
    assert size > 3_000_000, size  # a multi-megabyte trace: pyarrow's footer read alone is 64 KiB
    stack.s3.gate.reset_count()
    whole = mlflow_flux.load_traces(run_id)
    whole_bytes = stack.s3.gate.received
    stack.s3.gate.reset_count()
    part = mlflow_flux.load_traces(run_id, columns=["w_std"], layers=["0"], epochs=[99])
    part_bytes = stack.s3.gate.received
    expected = whole[(whole.layer == "0") & (whole.epoch == 99)][["epoch", "layer", "neuron", "w_std"]]
    assert part.reset_index(drop=True).equals(expected.reset_index(drop=True).astype(part.dtypes))
    assert whole_bytes >= size and part_bytes < 0.1 * size, (part_bytes, whole_bytes, size)
    # the report's read: the key columns and the summaries' columns, every epoch
    stack.s3.gate.reset_count()
    from mlflow_flux.traces.reader import opened_trace

    with opened_trace(alice, alice.get_run(run_id)) as source:
        table = pq.ParquetFile(source, pre_buffer=True).read(columns=[*KEY_COLUMNS, *SUMMARY_COLUMNS])
    report_bytes = stack.s3.gate.received
    assert table.num_rows == len(whole) and report_bytes < 0.75 * size, (report_bytes, size)
    print(f"\n{store}: trace {size} B; whole read {whole_bytes} B; one column of one layer at one epoch "
          f"{part_bytes} B ({part_bytes / size:.1%}); the report's columns {report_bytes} B "
          f"({report_bytes / size:.1%})")
