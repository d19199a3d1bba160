"""A user's own output, as docs/architecture.md shows it: the block runs as written, and what it logs equals the
trace's own values."""

from __future__ import annotations

import re

import mlflow
import numpy as np

import mlflow_flux
from tests.helpers import ROOT


def test_the_documented_output_runs_as_written_and_logs_what_the_trace_holds(store):
    text = (ROOT / "docs" / "architecture.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class MeanWeight" in b]
    namespace: dict = {}
    exec(compile(block, "docs/architecture.md", "exec"), namespace)  # the docs' own example, run as written
    run_id = namespace["run"].info.run_id
    client = mlflow.MlflowClient()
    trace = mlflow_flux.load_traces(run_id)
    for layer in ("0", "2"):
        logged = [(m.step, m.value) for m in client.get_metric_history(run_id, f"mine/{layer}/w_mean")]
        rows = trace[trace.layer == layer]
        expected = [(epoch, float(np.mean(group.w_mean.to_numpy(np.float32))))
                    for epoch, group in rows.groupby("epoch")]
        assert [step for step, _ in logged] == [0, 1, 2]
        np.testing.assert_allclose([v for _, v in logged], [v for _, v in expected], rtol=1e-6)
    assert client.get_run(run_id).info.status == "FINISHED"
