"""Neuron-level SQL over the traces of many runs: :func:`~.engine.query` (DuckDB, on one machine) and
:func:`~.ray_data.traces_dataset` (Ray Data, on a cluster), the same rows either way (:mod:`.sources`)."""
