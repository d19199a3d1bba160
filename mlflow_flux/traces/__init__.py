"""Traces and MLflow I/O: the trace schema (defined once in :mod:`.schema`), the streaming Parquet sink, batched
metrics, the reader (``load_traces``, ranged HTTP), how runs are named and tagged, and :mod:`.mlflow_adapter`, the
one module that calls MLflow's internals."""
