"""Signals during a stop, with real signals sent to a child process: what a terminal's Ctrl-C under `mlflow run` and a
scheduler's repeated SIGTERM do."""

import subprocess
import sys
import textwrap

from tests.helpers import default_sigint

# The child stops on its first signal, then sends itself more while it "saves"; it prints what it saw.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from mlflow_flux.interrupts import stop_on_signals

    def pause():  # a signal's handler runs between bytecodes: give it some
        for _ in range(200):
            time.sleep(0.001)

    later, wait = sys.argv[1].split(","), float(sys.argv[2])
    try:
        with stop_on_signals(sys.stdout):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                pause()
            except KeyboardInterrupt as exc:
                print("stopping on", exc.args[0], flush=True)
                time.sleep(wait)
                for name in later:
                    os.kill(os.getpid(), getattr(signal, name))
                    pause()
                print("saved", flush=True)
    except KeyboardInterrupt:
        print("abandoned", flush=True)
""")


def _stop(later: str, wait: float = 0.0) -> list[str]:
    done = subprocess.run([sys.executable, "-c", CHILD, later, str(wait)], capture_output=True, text=True,
                          timeout=60, preexec_fn=default_sigint)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_mlflow_runs_sigterm_right_after_a_ctrl_c_is_the_same_stop_and_says_nothing():
    # `mlflow run` answers the terminal's SIGINT by terminating its entry point: one Ctrl-C, one stop, no line.
    assert _stop("SIGTERM") == ["stopping on SIGINT", "saved"]
    # Any later signal still counts: the second is noted, the third abandons the saving.
    assert _stop("SIGTERM,SIGINT") == ["stopping on SIGINT",
                                       "mlflow-flux: SIGINT received while stopping: saving what was trained "
                                       "(a third signal abandons it)", "saved"]
    assert _stop("SIGTERM,SIGINT,SIGTERM") == [
        "stopping on SIGINT",
        "mlflow-flux: SIGINT received while stopping: saving what was trained (a third signal abandons it)",
        "abandoned"]


def test_a_sigterm_long_after_the_ctrl_c_is_a_second_signal():
    assert _stop("SIGTERM", wait=2.5) == [
        "stopping on SIGINT",
        "mlflow-flux: SIGTERM received while stopping: saving what was trained (a third signal abandons it)", "saved"]
