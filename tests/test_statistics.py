"""The sums and statistics are declared once (mlflow_flux/statistics.py): the trace's schema, the C fast path's
layout, the distributed merge and docs/traces.md's column table all follow that table."""

from __future__ import annotations

import os

import pytest

from mlflow_flux import fluctuation, statistics
from mlflow_flux.recording import fastpath
from mlflow_flux.traces.schema import STAT_COLUMNS, TRACE_SCHEMA, column_table
from tests.helpers import ROOT


def test_the_trace_stores_the_table_in_its_order_summary_columns_first_derived_last():
    assert STAT_COLUMNS == statistics.STAT_NAMES
    assert TRACE_SCHEMA.names[3:] == list(statistics.STAT_NAMES)
    assert statistics.STAT_NAMES[: len(fluctuation.INPUT_COLUMNS)] == fluctuation.INPUT_COLUMNS
    assert sorted((*statistics.COMPUTED, *statistics.CHAINED, *statistics.DERIVED)) == sorted(statistics.STAT_NAMES)
    assert [statistics.STAT_NAMES[row] for row in statistics.COMPUTED_ROWS] == list(statistics.COMPUTED)
    assert statistics.STAT_NAMES[-len(statistics.DERIVED):] == statistics.DERIVED
    assert {s.defined for s in statistics.STATISTICS} <= set(statistics.DEFINED_WHEN)
    assert {s.merge for s in statistics.SUMS} <= {"samples", "add", "local"}


def test_the_c_fast_path_was_built_from_this_table():
    extension = fastpath.fastpath()
    if extension is None:
        if os.environ.get("MLFLOW_FLUX_REQUIRE_FASTPATH") == "1":
            pytest.fail("the C fast path is not built, or was built from another table: rebuild it (make install)")
        pytest.skip("the optional C extension is not built")
    assert extension.SUMS == statistics.SUM_NAMES
    assert extension.STATISTICS == statistics.COMPUTED
    assert len(statistics.SUMS) == extension.SUM_ROWS


def test_the_generated_c_layout_names_every_sum_and_statistic():
    layout = statistics.c_layout()
    for name in (*statistics.SUM_NAMES, *statistics.COMPUTED):
        assert name.upper() in layout and f'"{name}"' in layout


def test_the_docs_column_table_is_the_schema():
    text = (ROOT / "docs" / "traces.md").read_text()
    assert column_table() in text, "docs/traces.md's column table differs from mlflow_flux.traces.schema.column_table()"


def test_the_docs_summary_table_is_the_declaration():
    from mlflow_flux.fluctuation import summary_table

    text = (ROOT / "docs" / "metrics.md").read_text()
    assert summary_table() in text, "docs/metrics.md's summary table differs from fluctuation.summary_table()"
