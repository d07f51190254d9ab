"""The duplicate count of the reliability table where batches carry no tags (Anthropic) sees a
shard paid twice: by content the service received, not by metadata the batches do not have."""

from pathlib import Path

from batch_pipelines.profiles import MESSAGES
from batch_pipelines.providers import AnthropicProvider
from batch_pipelines.submission import RecordedBatches
from batch_pipelines_tests.reliability.duplicates import records
from batch_pipelines_tests.reliability.world import KEY, PARTITIONS, Scenario, open_world
from batch_pipelines_tests.support.profiles import ANTHROPIC


def test_a_shard_sent_again_is_counted_once_per_extra_batch_recorded_or_not():
    with open_world(Scenario("test", lambda world: None), ANTHROPIC) as world:
        world.partitions = (PARTITIONS[0],)
        world.submit()
        world.drive()
        assert world.measure().duplicate_submissions == 0
        [record] = records(world.records_root)
        shard = Path(record["shard"])
        assert shard.exists()

        with AnthropicProvider("anthropic", api_key=KEY, base_url=world.service.base_url) as provider:
            provider.submit(shard, endpoint=MESSAGES)  # an orphan: no record claims it
            assert world.measure().duplicate_submissions == 1
            # A second create recorded with the same tags is no more meant than the orphan.
            RecordedBatches(provider, world.records_root).submit(shard, endpoint=MESSAGES, metadata=record["tags"])
            assert world.measure().duplicate_submissions == 2
            assert len(world.batches()) == 3
