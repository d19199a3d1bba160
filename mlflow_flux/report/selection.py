"""Which runs a report compares: any that hold a trace, by sweep, experiment or filter string, asked of the
tracking server."""

from __future__ import annotations

from ..errors import FluxError, InvalidParameter, NoRunsMatch
from ..traces import mlflow_adapter
from ..traces.runs import LAYERS_PARAM, ROLE_TAG, SWEEP_TAG

__all__ = ["select_runs"]


# Every run a watcher wrote holds this parameter; sweeps' parents and report runs do not. A study variant that
# failed before its watcher started has no trace but is still listed (as skipped, with its reason).
HAS_TRACE = f"params.`{LAYERS_PARAM}` LIKE '%'"
IS_VARIANT = f"tags.`{ROLE_TAG}` = 'variant'"


def _search(client, ids: list[str], condition: str | None) -> list:
    """Runs holding a trace, or study variants, that meet ``condition`` (MLflow's grammar has no OR: two queries)."""
    found = {}
    for kind in (HAS_TRACE, IS_VARIANT):
        query = kind if not condition else f"{kind} and {condition}"
        for run in client.search_runs(ids, query, max_results=5000, order_by=["attributes.start_time ASC"]):
            found.setdefault(run.info.run_id, run)
    return sorted(found.values(), key=lambda run: run.info.start_time)


def select_runs(client, sweep_id: str | None = None, experiment: str | None = None,
                filter_string: str | None = None) -> tuple[list, str, str | None]:
    """The runs to compare (every run that holds a trace), a description of the choice, and the sweep they belong
    to (if one).

    By sweep (a parent run id), by experiment, by filter string; by default the latest sweep of the current
    experiment, or, when it has no sweep, every run in it that holds a trace (runs of ``watch()`` in a user's loop,
    of the Lightning and Hugging Face callbacks).
    """
    if sweep_id is not None:
        try:
            sweep = client.get_run(sweep_id)
        except Exception as exc:  # MLflow's own kinds: unknown run; a 401/403 goes up as itself
            if mlflow_adapter.is_auth_error(exc):
                raise
            raise NoRunsMatch(f"no run with id {sweep_id!r}") from None
        ids = [sweep.info.experiment_id]
        query = f"tags.`{SWEEP_TAG}` = '{sweep_id}'"
        description = f"sweep {sweep_id}"
    else:
        ids = mlflow_adapter.experiment_ids(client, experiment)
        if filter_string:
            # MLflow's filter grammar has AND only and no parentheses, so joining needs no grouping.
            query, description = filter_string, f"filter {filter_string!r}"
        elif experiment is not None:
            query, description = None, f"experiment {experiment!r}"
        else:
            latest = client.search_runs(ids, f"tags.`{ROLE_TAG}` = 'sweep'", max_results=1,
                                        order_by=["attributes.start_time DESC"])
            if latest:
                sweep_id = latest[0].info.run_id
                query = f"tags.`{SWEEP_TAG}` = '{sweep_id}'"
                description = f"latest sweep {sweep_id}"
            else:
                query, description = None, "every watched run of the current experiment"
    try:
        runs = _search(client, ids, query)
    except Exception as exc:  # a malformed filter string is the usual cause; a 401/403 goes up as itself
        if mlflow_adapter.is_auth_error(exc):
            raise
        message = getattr(exc, "message", str(exc))
        if filter_string:
            raise InvalidParameter("filter", filter_string, message) from None
        raise FluxError(f"the run search failed ({description}): {message}") from None
    if not runs:
        raise NoRunsMatch(f"no runs holding a trace match {description}")
    return runs, description, sweep_id
