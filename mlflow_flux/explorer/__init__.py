"""The neuron explorer: one self-contained, interactive HTML page per run (and one across a report's runs) that
opens in MLflow's artifact viewer and from disk, offline.

:mod:`.pooling` (what is drawn, pure numpy) -> :mod:`.encoding` (how the page carries it) -> :mod:`.page` (the page)
<- :mod:`.build` (reading traces a chunk at a time); :mod:`.runs` finds runs and their traces in MLflow.
"""

from .build import Budget, LivePooler, PooledRun, RunInput, pool_run
from .page import render_page

__all__ = ["Budget", "LivePooler", "PooledRun", "RunInput", "pool_run", "render_page", "PAGE_FILE"]

PAGE_FILE = "explorer.html"  # where a run keeps its page, at the root of its artifacts
