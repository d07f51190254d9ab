"""Submitting without paying twice where the partition lock cannot help, and a provider's full queue."""

from collections import Counter
from collections.abc import Callable

import dagster as dg

from batch_pipelines.local_service import FAULTS_METADATA_KEY, FaultPlan, HttpFault
from batch_pipelines.pipeline.ledger import is_submission
from batch_pipelines_tests.support.driver import Harness, make_resource
from batch_pipelines_tests.reliability.world import PARTITIONS, ROWS, Scenario, World, open_world

DAY = PARTITIONS[0]


def _world(**setting) -> Scenario:
    return Scenario("test", lambda world: None, **setting)


def test_two_deployments_racing_keep_the_first_batch_and_cancel_the_other():
    """Two instances and storages, two locks: both runs create a batch, then both keep the older one."""
    with open_world(_world()) as world:
        world.partitions = (DAY,)
        h = world.harness
        other = world.root / "other-storage"
        other_harness = Harness(world.instance, h.pipeline, h.texts, make_resource(world.service.base_url, other))
        world.run([h.texts, h.pipeline.requests_asset], DAY)
        other_harness.materialize([h.pipeline.requests_asset], DAY)
        # Both lists are answered 2 s late, as they were when the call came: each misses the other's
        # batch. The batches take 2 s, so the loser is still running when it is cancelled.
        slow_list = HttpFault(route="/v1/batches", method="GET", status=None, delay=2.0, after=True, times=2)
        world.service.set_faults(FaultPlan(row_delay=0.02, http_faults=(slow_list,)))

        other_home = world.root / "other-home"  # the other deployment's instance: the lock lives in an instance
        other_home.mkdir()
        assert world.race_submits(DAY, [world.storage, other], homes=[world.instance.root_directory, str(other_home)]) == [0, 0]

        statuses = {b["id"]: b["status"] for b in world.batches()}
        recorded = {m["batch_ids"][0] for m in _batch_metadata(world)}
        assert len(statuses) == 2  # the lock of one deployment does not reach the other: both created
        [kept] = recorded  # ... but both runs recorded the same one
        [loser] = set(statuses) - {kept}
        assert statuses[loser] in ("cancelling", "cancelled") and statuses[kept] not in ("cancelling", "cancelled")
        world.drive()
        frame = h.results(DAY)
        assert len(frame) == ROWS and set(frame["outcome"]) == {"succeeded"}


def _refused(times: int) -> Callable[[str | None, int], dict[str, str]]:
    """Batch tags refusing a partition's first ``times`` submissions as if the token queue were full."""
    seen: Counter[str | None] = Counter()
    refusal = {FAULTS_METADATA_KEY: FaultPlan(validation_error="token_limit_exceeded").to_json()}

    def tags(partition: str | None, attempt: int) -> dict[str, str]:
        seen[partition] += 1
        return refusal if seen[partition] <= times else {}

    return tags


def _blocking(world: World):
    h = world.harness
    world.run([*h.assets], DAY)
    return h.results(DAY), world.batches()


def test_a_full_queue_is_waited_out_and_the_shard_sent_again_in_blocking_mode():
    setting = _world(pipeline={"blocking": True, "batch_tags": _refused(2)}, resource={"resubmit_delay_seconds": 0.05})
    with open_world(setting) as world:
        frame, batches = _blocking(world)

    assert len(frame) == ROWS and set(frame["outcome"]) == {"succeeded"} and set(frame["attempt"]) == {1}
    assert sorted(b["status"] for b in batches) == ["completed", "failed", "failed"]
    assert sorted(b["metadata"].get("bp_resubmit", "0") for b in batches) == ["0", "1", "2"]


def test_a_queue_that_stays_full_ends_in_failed_rows_not_rejected_ones():
    setting = _world(pipeline={"blocking": True, "batch_tags": _refused(99)}, resource={"resubmit_delay_seconds": 0.01, "max_resubmits": 2})
    with open_world(setting) as world:
        frame, batches = _blocking(world)

    assert len(batches) == 3  # the first submission and two more
    assert set(frame["outcome"]) == {"failed"} and set(frame["error_code"]) == {"token_limit_exceeded"}


def _batch_metadata(world: World) -> list[dict]:
    """The day's submissions recorded by ``<name>_batch`` (observations), latest first."""
    records = world.instance.fetch_observations(
        dg.AssetRecordsFilter(world.pipeline.batch_asset.key, asset_partitions=[DAY]), limit=100
    ).records
    metadata = [r.asset_observation.metadata for r in records]
    return [{k: getattr(v, "value", v) for k, v in m.items()} for m in metadata if is_submission(m)]
