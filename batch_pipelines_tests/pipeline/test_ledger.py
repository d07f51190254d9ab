"""The ledger's reads of the event log: each partition's latest materialization, for many at once."""

import dagster as dg

from batch_pipelines.pipeline.ledger import ROUND_KEY, latest_metadata, round_finished
from batch_pipelines_tests.support.instances import on_every_storage

pytestmark = on_every_storage

KEY = dg.AssetKey("pipe_batch")


def _materialize(instance: dg.DagsterInstance, partition: str | None, round_id: int) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=KEY, partition=partition, metadata={ROUND_KEY: round_id}))


def test_each_partitions_latest_materialization_over_pages(instance):
    for round_id in (1, 2, 3):
        for day in ("2024-01-01", "2024-01-02", "2024-01-03"):
            _materialize(instance, day, round_id * 10 + int(day[-1]))
    _materialize(instance, "2024-01-02", 99)  # its newest, after the others'

    # Pages of two records: the newest of each partition is found, the partition never materialized is absent.
    found = latest_metadata(instance, KEY, ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"], page_size=2)

    assert {p: m[ROUND_KEY].value for p, m in found.items()} == {"2024-01-01": 31, "2024-01-02": 99, "2024-01-03": 33}
    assert round_finished(found.get("2024-01-02"), 99) and not round_finished(found.get("2024-01-01"), 11)
    assert not round_finished(found.get("2024-01-04"), 1)
    assert latest_metadata(instance, KEY, []) == {}


def test_an_unpartitioned_asset_has_one_latest(instance):
    assert latest_metadata(instance, KEY, [None]) == {}
    _materialize(instance, None, 1)
    _materialize(instance, None, 2)
    assert latest_metadata(instance, KEY, [None])[None][ROUND_KEY].value == 2
