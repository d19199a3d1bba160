"""The failure paths of a real cluster job, end to end: preemption (SIGTERM, `timeout`, Ctrl-C under `mlflow run`), a
tracking server that is gone at start or dies mid-run, and bad input through `mlflow run -P`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import mlflow_flux
from mlflow_flux.errors import FluxError
from mlflow_flux.traces.reader import read_trace_files
from tests.helpers import (
    PYTHON,
    ROOT,
    MlflowServer,
    default_sigint,
    free_port,
    group_ended,
    run_concurrently,
    runs_of,
    subprocess_env,
)

pytestmark = pytest.mark.slow

TINY = ["--n-samples", "64", "--hidden", "32,8", "--image-size", "16", "--window", "2", "--flush-every", "5"]
SCRIPT = Path(__file__).parent / "scripts" / "watched_loop.py"


def _start(args: list[str], env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint, **kwargs)


def _wait_for_line(stream, marker: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return line
    raise AssertionError(f"never printed {marker!r}; printed:\n{''.join(seen)[-3000:]}")


def _wait_for_epoch(stream, epoch: int, timeout: float = 300) -> None:
    """Until a progress line reports ``epoch`` or later: progress prints on a timer, so the exact epoch may never
    show, and a loaded machine reaches it later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        if (found := re.search(r"epoch (\d+)/", line)) and int(found.group(1)) >= epoch:
            return
    raise AssertionError(f"never reached epoch {epoch}")


def _artifacts(run_id: str, path: str) -> set[str]:
    return {f.path for f in MlflowClient().list_artifacts(run_id, path)}


def test_sigterm_of_train_ends_the_run_killed_with_its_trace_compacted(store):
    process = _start([*PYTHON, "-m", "mlflow_flux.cli", "train", "--epochs", "5000", *TINY], subprocess_env(store))
    _wait_for_epoch(process.stderr, 200)  # well into training: forty segments of five epochs written
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    (run,) = runs_of(store)
    assert run.info.status == "KILLED"
    assert run.data.tags["mlflow_flux.failure"] == "stopped by SIGTERM"
    assert _artifacts(run.info.run_id, "traces") == {"traces/traces.parquet"}
    assert len(set(mlflow_flux.load_traces(run.info.run_id).epoch)) > 1


def test_sigterm_of_a_users_own_loop_ends_its_run_killed(store, tmp_path):
    process = _start([sys.executable, str(SCRIPT), str(tmp_path / "spool"), "50", "100000"], subprocess_env(store))
    run_id = _wait_for_line(process.stdout, "run ").split()[1]
    _wait_for_line(process.stdout, "epoch 5")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode in (-signal.SIGINT, 130, -signal.SIGTERM, 143)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    assert "traces/traces.parquet" in _artifacts(run_id, "traces")


def test_timeout_of_a_sweep_stops_every_process_and_ends_every_run_killed(store):
    # SIGTERM to the sweep's whole process group once every variant trains, as `timeout`, SLURM, Kubernetes or
    # `docker stop` would (a fixed `timeout 25` raced the start-up of three interpreters on a loaded machine).
    args = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager",
            "local", "--experiment-name", store["experiment_name"], "-P", "lrs=0.01,0.001", "-P", "epochs=100000",
            "-P", "n_samples=64", "-P", "hidden=32,8", "-P", "image_size=16", "-P", "window=2", "-P", "flush_every=5"]
    process = _start(args, subprocess_env(store), start_new_session=True)
    for _ in range(2):  # every variant trains (two: one per core, each killed mid-epoch)
        _wait_for_line(process.stderr, "epoch 1/")
    os.killpg(process.pid, signal.SIGTERM)
    process.communicate(timeout=300)
    assert process.returncode != 0
    assert group_ended(process.pid, timeout=150), "processes of the sweep outlived it"
    runs = runs_of(store)
    (sweep,) = [r for r in runs if r.data.tags.get("mlflow_flux.role") == "sweep"]
    variants = [r for r in runs if r.data.tags.get("mlflow_flux.role") == "variant"]
    assert sweep.info.status == "KILLED"
    assert len(variants) == 2 and {v.info.status for v in variants} == {"KILLED"}
    for variant in variants:
        assert "traces/traces.parquet" in _artifacts(variant.info.run_id, "traces"), variant.info.run_name


def test_ctrl_c_under_mlflow_run_ends_the_sweep_and_every_variant_killed(store):
    args = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local",
            "--experiment-name", store["experiment_name"], "-P", "lrs=0.01,0.001", "-P", "epochs=100000",
            "-P", "n_samples=64", "-P", "hidden=32,8", "-P", "image_size=16", "-P", "window=2", "-P", "flush_every=5"]
    process = _start(args, subprocess_env(store), start_new_session=True)
    for _ in range(2):  # every variant trains
        _wait_for_line(process.stderr, "epoch 1/")
    os.killpg(process.pid, signal.SIGINT)
    process.communicate(timeout=300)
    assert group_ended(process.pid, timeout=150), "processes of the sweep outlived it"
    runs = runs_of(store)
    statuses = {r.data.tags.get("mlflow_flux.role"): r.info.status for r in runs}
    assert statuses == {"sweep": "KILLED", "variant": "KILLED"}, [(r.info.run_name, r.info.status) for r in runs]
    variants = [r for r in runs if r.data.tags.get("mlflow_flux.role") == "variant"]
    assert len(variants) == 2 and all(v.info.status == "KILLED" for v in variants)
    for variant in variants:
        assert "traces/traces.parquet" in _artifacts(variant.info.run_id, "traces"), variant.info.run_name


def test_ctrl_c_under_mlflow_run_ends_a_train_killed_not_failed(store):
    args = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "train", "--env-manager", "local",
            "--experiment-name", store["experiment_name"], "-P", "epochs=100000", "-P", "n_samples=64",
            "-P", "hidden=32,8", "-P", "image_size=16", "-P", "window=2"]
    process = _start(args, subprocess_env(store), start_new_session=True)
    _wait_for_line(process.stderr, "epoch ")
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    process.communicate(timeout=120)
    assert group_ended(process.pid, timeout=60)
    (run,) = runs_of(store)
    assert run.info.status == "KILLED"
    assert "traces/traces.parquet" in _artifacts(run.info.run_id, "traces")


def test_an_unreachable_server_is_one_line_within_seconds_for_every_command(store):
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**subprocess_env(store), "MLFLOW_TRACKING_URI": dead}
    # The floor: an interpreter that imports what the CLI imports (it also warms the bytecode caches, which a fresh
    # -OO environment compiles on first import), started beside the three commands: the four share the cores
    # alike, and the check itself must add seconds, not MLflow's retries.
    commands = (["train", *TINY], ["sweep", *TINY], ["compare"])
    floor = [*PYTHON, "-c", "import torch, mlflow, mlflow_flux.cli"]
    (start_up, floor_seconds), *results = run_concurrently(
        [(argv, env) for argv in [floor, *([*PYTHON, "-m", "mlflow_flux.cli", *c] for c in commands)]], timeout=300)
    assert start_up.returncode == 0, start_up.stderr
    expected = f"mlflow-flux: error: cannot reach the tracking server at {dead} (connection refused)"
    for command, (result, seconds) in zip(commands, results):
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1, (command, result.stderr)
        assert lines == [expected], command
        assert seconds < floor_seconds + 20, (command, seconds, floor_seconds)  # the check itself takes ~1 s
    started = time.monotonic()
    with pytest.raises(FluxError, match=f"cannot reach the tracking server at {dead}"):
        mlflow_flux.load_traces("0123456789abcdef", tracking_uri=dead)
    assert time.monotonic() - started < 10


def test_a_server_that_dies_mid_run_costs_a_bounded_wait_and_keeps_the_trace(tmp_path):
    server = MlflowServer(tmp_path).start()
    try:
        env = subprocess_env({"uri": server.uri, "experiment_name": "dies"}, MLFLOW_FLUX_UPLOAD_TIMEOUT="10")
        process = _start([*PYTHON, "-m", "mlflow_flux.cli", "train", "--epochs", "400", *TINY], env)
        _wait_for_line(process.stderr, "epoch ")
        server.stop()  # for good: the whole process group, workers included
        lines = []  # (when, line): the wait is counted from the end of training, whatever the machine's load
        reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in process.stderr))
        reader.start()
        process.wait(timeout=600)
        exited = time.monotonic()
        reader.join()
        err = "".join(line for _, line in lines)
        # The last epoch always prints its progress line: training ended there.
        trained = next((when for when, line in lines if "epoch 400/400" in line), None)
    finally:
        server.stop()
    assert process.returncode == 3, err[-3000:]
    message = [line for line in err.splitlines() if line.startswith("mlflow-flux: error:")]
    assert len(message) == 1 and f"tracking server at {server.uri} stopped answering" in message[0]
    assert "Traceback" not in err
    kept = Path(message[0].split("; kept at ")[1].split("; upload it with: ")[0])
    assert "traces/traces.parquet" in message[0] and "did not reach the artifact store" in message[0]
    trace = read_trace_files([kept / "traces.parquet"]).to_pandas()
    assert set(trace.epoch) == set(range(400))  # every epoch, in one compacted file on local disk
    assert trained is not None, err[-3000:]
    after = exited - trained
    assert after < 180, after  # the 10 s upload timeout, a few health checks and the compaction, not a hang


def test_bad_input_through_mlflow_run_is_one_line_and_a_failed_run_with_the_reason(store):
    args = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local",
            "--experiment-name", store["experiment_name"], "-P", "lr=0.1", "-P", "epochs=1"]
    result = subprocess.run(args, cwd=ROOT, env=subprocess_env(store), capture_output=True, text=True, timeout=300)
    ours = [line for line in result.stderr.splitlines() if line.startswith("mlflow-flux:")]
    assert ours == ["mlflow-flux: error: invalid value for 'lr': '0.1' (the sweep varies it: pass lrs= instead)"]
    assert "Traceback" not in result.stderr
    (run,) = runs_of(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["mlflow_flux.failure"].startswith("bad input: invalid value for 'lr'")
    # MLflow's `mlflow run` ends every failed entry point with its own exit code 1; our process exited 2.
    assert result.returncode == 1
