"""Every status a batch can reach, with counts and timestamps as OpenAI reports them."""

from __future__ import annotations

import pytest

from batch_pipelines.local_service import FaultPlan, ServiceError
from batch_pipelines.local_service.worker_loop import Worker
from batch_pipelines_tests.support.engine import file_lines, submit, watch_batch
from batch_pipelines_tests.support.request_files import chat_line
from batch_pipelines_tests.support.waiting import wait_for_batch

STAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")


def _stamped(batch):
    return {name for name in STAMPS if batch[name] is not None}


def test_progress_is_visible_through_every_status(local_service, tmp_path):
    svc = local_service(faults=FaultPlan(row_delay=0.02))
    batch = submit(svc.engine, tmp_path, [chat_line(i) for i in range(40)])
    assert batch["status"] == "validating" and _stamped(batch) == set()
    seen, counts, batch = watch_batch(svc.engine, batch["id"])
    assert seen[0] in ("validating", "in_progress") and "in_progress" in seen and seen[-1] == "completed"
    assert counts == sorted(counts) and any(0 < c < 40 for c in counts), "progress advances row by row"
    assert _stamped(batch) == {"in_progress_at", "finalizing_at", "completed_at"}
    assert batch["created_at"] <= batch["in_progress_at"] <= batch["finalizing_at"] <= batch["completed_at"]
    assert batch["request_counts"] == {"total": 40, "completed": 40, "failed": 0}


def test_realistic_speed_shows_every_phase(local_service, tmp_path):
    svc = local_service(speed="realistic")
    batch = submit(svc.engine, tmp_path, [chat_line(i) for i in range(10)])
    seen, _, final = watch_batch(svc.engine, batch["id"], interval=0.02)
    assert list(dict.fromkeys([batch["status"], *seen])) == ["validating", "in_progress", "finalizing", "completed"]
    assert final["completed_at"] - final["created_at"] >= 3  # about 2 s validating, 0.5 s rows, 1 s finalizing


def test_expiry_at_the_scaled_completion_window(local_service, tmp_path):
    # 24 h at time_scale 86400 is one second; 40 rows at 50 ms each need two.
    svc = local_service(time_scale=86400, faults=FaultPlan(row_delay=0.05))
    batch = submit(svc.engine, tmp_path, [chat_line(i) for i in range(40)])
    assert batch["expires_at"] == batch["created_at"] + 1
    final = wait_for_batch(svc.engine, batch["id"])
    assert final["status"] == "expired" and final["expired_at"] and final["completed_at"] is None
    counts = final["request_counts"]
    assert 0 < counts["completed"] < 40 and counts["completed"] + counts["failed"] == 40
    done = {line["custom_id"] for line in file_lines(svc.engine, final["output_file_id"])}
    expired = file_lines(svc.engine, final["error_file_id"])
    assert {e["error"]["code"] for e in expired} == {"batch_expired"} and all(e["response"] is None for e in expired)
    assert done | {e["custom_id"] for e in expired} == {f"text_{i}" for i in range(40)}
    assert len(done) == counts["completed"] and len(expired) == counts["failed"]


def test_cancel_while_validating_ends_cancelled_without_files(local_service, tmp_path):
    svc = local_service(worker="none")
    batch = submit(svc.engine, tmp_path, [chat_line(0)])
    assert svc.engine.cancel_batch(batch["id"])["status"] == "cancelling"
    assert svc.engine.cancel_batch(batch["id"])["status"] == "cancelling"  # repeating it is harmless
    Worker(svc.engine.store, idle_exit=0).run()
    final = svc.engine.get_batch(batch["id"])
    assert final["status"] == "cancelled" and final["output_file_id"] is None and final["error_file_id"] is None
    assert _stamped(final) == {"cancelling_at", "cancelled_at"}


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_cancel_of_a_terminal_batch_is_a_400(local_service, tmp_path, status):
    svc = local_service()
    lines = [chat_line(0)] if status == "completed" else [b"broken"]
    batch = wait_for_batch(svc.engine, submit(svc.engine, tmp_path, lines)["id"])
    assert batch["status"] == status
    with pytest.raises(ServiceError) as info:
        svc.engine.cancel_batch(batch["id"])
    assert info.value.status_code == 400 and f"'{status}'" in info.value.message


def test_every_row_failed_means_no_output_file(local_service, tmp_path):
    svc = local_service(faults=FaultPlan(row_failures={500: 1.0}))
    final = wait_for_batch(svc.engine, submit(svc.engine, tmp_path, [chat_line(i) for i in range(5)])["id"])
    assert final["status"] == "completed" and final["output_file_id"] is None and final["error_file_id"]
    assert final["request_counts"] == {"total": 5, "completed": 0, "failed": 5}
