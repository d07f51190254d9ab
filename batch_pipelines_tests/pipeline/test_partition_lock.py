"""The partition lock, held in the Dagster instance: one holder at a time, a dead holder taken over.

(A holder whose process died on this host is taken over at once: test_pipeline's crash test.)
"""

from __future__ import annotations

import threading

import dagster as dg
import pytest

from batch_pipelines.pipeline.partition_lock import PartitionLock, lock_key
from batch_pipelines_tests.support.driver import in_progress_run
from batch_pipelines_tests.support.waiting import wait_until

_days = iter(f"2024-02-{d:02d}" for d in range(1, 29))


@pytest.fixture
def day() -> str:
    """A partition of its own per test (the instance is the module's)."""
    return next(_days)


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def _waiting(instance: dg.DagsterInstance, day: str, run_id: str) -> bool:
    return any(step.run_id == run_id for step in instance.event_log_storage.get_concurrency_info(lock_key("p", day)).pending_steps)


def _holders(instance: dg.DagsterInstance, day: str) -> set[str]:
    return {slot.run_id for slot in instance.event_log_storage.get_concurrency_info(lock_key("p", day)).claimed_slots}


def test_a_second_claimer_waits_while_the_first_holds(instance, day):
    first, second = in_progress_run(instance), in_progress_run(instance)
    order: list[str] = []

    def claim_second() -> None:
        with PartitionLock(instance, second.run_id, "submit")("p", day):
            order.append("second")

    with PartitionLock(instance, first.run_id, "submit")("p", day):
        thread = threading.Thread(target=claim_second)
        thread.start()
        wait_until(lambda: _waiting(instance, day, second.run_id))
        assert thread.is_alive() and _holders(instance, day) == {first.run_id}
        order.append("first")
    thread.join(timeout=30)

    assert order == ["first", "second"]
    assert not _holders(instance, day)  # freed by each holder when it let go


def test_other_partitions_do_not_wait(instance, day):
    first, second = in_progress_run(instance), in_progress_run(instance)
    with PartitionLock(instance, first.run_id, "submit")("p", day):
        with PartitionLock(instance, second.run_id, "submit")("p", f"{day}-other"):
            pass  # taken at once: another key


@pytest.mark.parametrize("fate", ["failed", "deleted"])
def test_a_holder_whose_run_is_dead_is_taken_over(instance, day, fate):
    dead, waiter = in_progress_run(instance), in_progress_run(instance)
    held = PartitionLock(instance, dead.run_id, "submit")("p", day)
    held.__enter__()  # and never left: its run worker was killed elsewhere
    result: list[str] = []

    def claim() -> None:
        with PartitionLock(instance, waiter.run_id, "submit")("p", day):
            result.append("claimed")

    thread = threading.Thread(target=claim)
    thread.start()
    wait_until(lambda: _waiting(instance, day, waiter.run_id))
    assert thread.is_alive()  # the holder's run is still in progress: it waits
    if fate == "failed":
        instance.report_run_failed(instance.get_run_by_id(dead.run_id))  # what run monitoring does
    else:
        instance.delete_run(dead.run_id)
    thread.join(timeout=30)

    assert result == ["claimed"]
