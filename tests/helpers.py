"""Helpers the tests share: running the CLI and `mlflow run .` as a user would, and a real `mlflow server`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import torch
from torch import nn

import mlflow_flux

ROOT = Path(__file__).resolve().parents[1]
# Under `python -OO -m pytest` our own child processes run optimised too, so both modes are exercised end to end.
PYTHON = [sys.executable, *(["-OO"] if sys.flags.optimize >= 2 else [])]


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test Ctrl-C's: a shell's background job (``make test &``) ignores SIGINT, and
    its children inherit that, so Python would never raise KeyboardInterrupt; a terminal's foreground job does not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def group_ended(pgid: int, timeout: float) -> bool:
    """Whether every process of group ``pgid`` has ended within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    return False


def subprocess_env(store: dict, **extra: str) -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_EXPERIMENT_ID", None)  # mlflow.set_experiment exports it; the name is what children get
    env.update(
        MLFLOW_TRACKING_URI=store["uri"],
        MLFLOW_EXPERIMENT_NAME=store["experiment_name"],
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_cli(store: dict, *args: str, timeout: float = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``mlflow-flux ARGS`` in a child process, as a user runs it."""
    return subprocess.run(
        [*PYTHON, "-m", "mlflow_flux.cli", *args],
        cwd=cwd, env=subprocess_env(store), capture_output=True, text=True, timeout=timeout,
    )


def run_concurrently(commands: list[tuple[list[str], dict]], timeout: float = 300,
                     cwd: Path = ROOT) -> list[tuple[subprocess.CompletedProcess, float]]:
    """Each ``(argv, env)`` started at once, then waited for in that order: each result with the seconds from the
    common start until it was collected. On a timeout every one of them is killed before the error is raised."""
    start = time.monotonic()
    started = [(argv, subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True))
               for argv, env in commands]
    done = []
    for argv, process in started:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for _, other in started:
                other.kill()
            raise
        done.append((subprocess.CompletedProcess(argv, process.returncode, out, err), time.monotonic() - start))
    return done


def run_cli_concurrently(commands: list[tuple[list[str], dict]], timeout: float = 300,
                         cwd: Path = ROOT) -> list[subprocess.CompletedProcess]:
    """``mlflow-flux ARGS`` for each ``(ARGS, env)`` at once, in that order: commands that only check their input
    (and fail) spend most of their time importing, which two cores do side by side."""
    cli = [([*PYTHON, "-m", "mlflow_flux.cli", *args], env) for args, env in commands]
    return [result for result, _ in run_concurrently(cli, timeout, cwd)]


def run_mlflow_project(store: dict, *params: str, entry_point: str = "main", timeout: float = 600):
    """``mlflow run . --env-manager local -e ENTRY -P ...`` from the project root."""
    args = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", "-e", entry_point,
            "--experiment-name", store["experiment_name"]]
    for param in params:
        args += ["-P", param]
    return subprocess.run(args, cwd=ROOT, env=subprocess_env(store), capture_output=True, text=True, timeout=timeout)


def runs_of(store: dict):
    return mlflow.search_runs(experiment_ids=[store["experiment_id"]], output_format="list")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GUARD = Path(__file__).resolve().parent / "scripts" / "guard.py"


class GuardedProcess:
    """A server process in its own process group (its workers outlive a plain kill of the parent, so it is stopped
    by group) that dies with the test process however that dies: tests/scripts/guard.py holds the parent-death
    signal."""

    def __init__(self, name: str, log: Path) -> None:
        self.name, self.log = name, log
        self.process: subprocess.Popen | None = None

    def spawn(self, command: list[str], env: dict | None = None, cwd: Path | None = None) -> None:
        out = open(self.log, "a")  # noqa: SIM115 -- the server's output, for as long as it runs
        self.process = subprocess.Popen([sys.executable, str(GUARD), *command], stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env, cwd=cwd)

    def wait_until(self, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 -- not up yet: refused, reset, or the client's own kind of that
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.name} did not start: " + self.log.read_text()[-3000:])

    def stop(self) -> None:
        """End the whole group at once: what these servers hold is thrown away with them, and a graceful stop
        (PostgreSQL's smart shutdown, gunicorn's workers) costs ~10 s each. A store that dies is what some tests
        want anyway."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None


class MlflowServer(GuardedProcess):
    """A real `mlflow server` on 127.0.0.1: by default a sqlite backend and artifacts served from local disk."""

    def __init__(self, root: Path, port: int | None = None, backend: str | None = None,
                 artifacts: str | None = None, options: tuple[str, ...] = (), env: dict | None = None) -> None:
        super().__init__("mlflow server", root / "server.log")
        self.root = root
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend = backend or f"sqlite:///{root / 'server.db'}"
        self.artifacts = artifacts or str(root / "artifacts")
        self.options, self.env = options, env

    def start(self, timeout: float = 120) -> MlflowServer:
        # MLflow 3's server also starts three job consumers (huey: GenAI jobs, periodic tasks), each an interpreter
        # importing MLflow (~3 s of CPU) and polling while it runs; nothing here submits a job.
        env = dict(self.env if self.env is not None else os.environ)
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        self.spawn([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                    "--backend-store-uri", self.backend, "--artifacts-destination", self.artifacts, "--workers", "1",
                    *self.options], env=env, cwd=self.root)
        self.wait_until(lambda: urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200, timeout)
        return self


def train_mlp(epochs: int, **watch_options) -> tuple[str, nn.Module]:
    """A small MLP trained under ``watch()`` in a new run of the current store; returns the run id and the model."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(64, 10)
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, **watch_options) as flux:
            for epoch in range(epochs):
                for batch in x.split(16):
                    optimizer.zero_grad()
                    nn.functional.mse_loss(model(batch), batch).backward()
                    optimizer.step()
                flux.end_epoch(epoch, {"loss/train": 0.0})
    return run.info.run_id, model
