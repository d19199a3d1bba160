"""Recording: which layers are watched, per-neuron accumulators, the hooks (and their optional C fast path), and
snapshots. Imports only :mod:`mlflow_flux.traces.schema` (the row layout it fills) and torch; never MLflow."""
