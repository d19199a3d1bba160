"""The outputs of a watched run, each behind one protocol (:class:`RunOutput`: start / end_epoch / close).

Built in, each turned on by its setting (:mod:`mlflow_flux.settings`): :mod:`.summaries` (``flux/...`` metrics),
:mod:`.trace` (the Parquet trace), :mod:`.figures` (PNGs), :mod:`.explorer` (the page). A user's own output
subclasses :class:`RunOutput` and is passed as ``watch(model, outputs=[...])`` (docs/architecture.md has an example).
"""

from .base import ACTION, OBSERVER, Closing, RunOutput, Step, WatchedRun

__all__ = ["RunOutput", "WatchedRun", "Step", "Closing", "OBSERVER", "ACTION"]
