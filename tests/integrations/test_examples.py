"""The examples run as a user would run them, each in under a minute, and end with their report."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.helpers import PYTHON, ROOT, subprocess_env


def _run(store, tmp_path, script: str) -> tuple[str, float]:
    started = time.monotonic()
    result = subprocess.run([*PYTHON, str(ROOT / "examples" / script)], cwd=tmp_path, env=subprocess_env(store),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, time.monotonic() - started


@pytest.mark.slow
def test_lightning_example_ends_with_a_report_by_width(store, tmp_path):
    out, _ = _run(store, tmp_path, "lightning_fit.py")
    assert "width" in out and (tmp_path / "flux-report-lightning" / "report.html").exists()


@pytest.mark.slow
@pytest.mark.docstrings
def test_transformers_example_ends_with_a_report_by_learning_rate(store, tmp_path):
    out, _ = _run(store, tmp_path, "transformers_trainer.py")
    assert "learning_rate" in out and (tmp_path / "flux-report-transformers" / "report.html").exists()
