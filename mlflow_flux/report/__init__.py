"""The read side: select runs that hold a trace, load them, compare them (pure functions), render the report.

:mod:`.pipeline` holds ``compare()``, which runs those steps in order (``mlflow_flux.compare`` is the same).
"""
