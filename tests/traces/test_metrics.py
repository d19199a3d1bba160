"""The metric logger: a batch the store refuses is split so the good metrics land, and losses are counted."""

from mlflow.tracking import MlflowClient

from mlflow_flux.traces.metrics import LOST_METRICS_TAG, MetricLogger
from mlflow_flux.traces.names import MetricNames


class LetsOneBadNameThrough(MetricNames):
    """A fault injected through the logger's own seam: one key skips sanitizing, so MLflow's real validation
    refuses every batch that holds it."""

    def key(self, name: str) -> str:
        return name if name == "bad name%" else super().key(name)


def test_a_refused_batch_is_split_until_every_good_metric_lands(store):
    client = MlflowClient()
    run_id = client.create_run(store["experiment_id"]).info.run_id
    logger = MetricLogger(client, run_id, interval=3600, names=LetsOneBadNameThrough()).start()
    for step in range(20):
        logger.log({"loss/train": step / 10, "good": 1.0, "bad name%": 2.0} if step == 7 else
                   {"loss/train": step / 10, "good": 1.0}, step=step)
    assert logger.close(timeout=60)  # every job done within the timeout (time itself is for benchmarks/)
    assert [m.step for m in client.get_metric_history(run_id, "loss/train")] == list(range(20))
    assert len(client.get_metric_history(run_id, "good")) == 20
    assert logger.lost == 1
    logger.tag_losses()
    assert client.get_run(run_id).data.tags[LOST_METRICS_TAG] == "1"


def test_values_that_are_not_numbers_are_one_clear_error(store):
    import pytest

    from mlflow_flux.errors import FluxError

    client = MlflowClient()
    logger = MetricLogger(client, client.create_run(store["experiment_id"]).info.run_id)
    with pytest.raises(FluxError, match="metric 'acc' must be a number, got 'high'"):
        logger.log({"acc": "high"}, step=0)
