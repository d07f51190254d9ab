"""Several OS processes on one data directory: one state, one worker, work that survives them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from functools import partial

from batch_pipelines.local_service import BatchEngine, FaultPlan
from batch_pipelines.local_service.worker_lock import WorkerLock
from batch_pipelines_tests.support.clients import sdk
from batch_pipelines_tests.support.engine import file_lines, submit
from batch_pipelines_tests.support.request_files import chat_line, write_lines
from batch_pipelines_tests.support.waiting import wait_for_batch, wait_until

_SCRIPT = """
import json, sys
from pathlib import Path
from batch_pipelines.local_service import BatchEngine, FaultPlan
data_dir, action, arg = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
worker = "process" if action == "submit-and-leave" else "none"
engine = BatchEngine(data_dir, profile="moonshot", worker=worker, faults=FaultPlan(row_delay=float(arg) if worker == "process" else 0))
if action in ("submit", "submit-and-leave"):
    lines = Path(sys.argv[4])
    ids = []
    for _ in range(int(arg) if action == "submit" else 1):
        uploaded = engine.create_file(lines.name, "batch", lines)
        ids.append(engine.create_batch(uploaded["id"], "/v1/chat/completions", "24h")["id"])
    print(json.dumps(ids))
elif action == "show":
    batch = engine.get_batch(arg)
    lines = open(engine.file_content_path(batch["output_file_id"]), "rb").read().decode() if batch["output_file_id"] else ""
    print(json.dumps({"batch": batch, "output": lines, "listed": [b["id"] for b in engine.list_batches(limit=100)["data"]]}))
engine.close()
"""


def _python(*args, env=None):
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=60, env=env or os.environ.copy()
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_two_processes_see_one_consistent_state(local_service, tmp_path):
    svc = local_service(profile="moonshot")
    requests = write_lines(tmp_path / "requests.jsonl", [chat_line(i) for i in range(10)])
    # Another process submits while this one submits over HTTP: every write lands.
    other = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(svc.data_dir), "submit", "15", str(requests)], stdout=subprocess.PIPE, text=True
    )
    client = sdk(svc)
    mine = []
    for _ in range(15):
        uploaded = client.files.create(file=requests, purpose="batch")
        mine.append(client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h").id)
    theirs = json.loads(other.communicate(timeout=60)[0])
    assert other.returncode == 0
    listed = [b.id for b in client.batches.list(limit=100)]
    assert sorted(listed) == sorted(mine + theirs) and len(set(listed)) == 30
    for batch_id in theirs + mine:  # this process's worker ran the other process's batches too
        assert wait_for_batch(svc.engine, batch_id)["status"] == "completed"
    shown = _python(svc.data_dir, "show", theirs[0])
    assert shown["batch"] == svc.engine.get_batch(theirs[0])
    assert shown["output"].encode() == client.files.content(shown["batch"]["output_file_id"]).content
    assert sorted(shown["listed"]) == sorted(listed)


def test_process_worker_finishes_after_the_submitter_exits(tmp_path):
    data_dir = tmp_path / "data"
    requests = write_lines(tmp_path / "requests.jsonl", [chat_line(i) for i in range(20)])
    env = {**os.environ, "BATCH_PIPELINES_WORKER_IDLE": "0.5"}
    [batch_id] = _python(data_dir, "submit-and-leave", 0.03, requests, env=env)  # the submitter has exited here
    with BatchEngine(data_dir, worker="none") as engine:
        assert engine.get_batch(batch_id)["status"] in ("validating", "in_progress")
        final = wait_for_batch(engine, batch_id)
        assert final["status"] == "completed" and final["request_counts"]["completed"] == 20
        # The detached worker exits once idle, freeing the lock for the next one.
        lock = WorkerLock(engine.store.lock_path)
        wait_until(lock.try_acquire, interval=0.05)
        lock.release()


def test_one_worker_per_data_dir(tmp_path):
    with BatchEngine(tmp_path / "data", worker="none") as engine:
        engine.faults = FaultPlan(row_delay=0.05)
        batch = submit(engine, tmp_path, [chat_line(i) for i in range(30)])
        command = [sys.executable, "-m", "batch_pipelines.local_service.worker", str(engine.data_dir)]
        first = subprocess.Popen(command)
        try:
            wait_for_batch(engine, batch["id"], ["in_progress"])
            second = subprocess.run(command, timeout=30)  # finds the lock taken and leaves at once
            assert second.returncode == 0
            assert first.poll() is None
            assert wait_for_batch(engine, batch["id"])["status"] == "completed"
        finally:
            first.kill()
            first.wait()


def _kill_point(engine, batch_id, start):
    """Why a worker may be killed now: "mid-batch" once it completed 20 more rows (from ``start``)
    with rows left, "late" when none are left (a worker that started slowly catches up with the
    batch's pace at once), None while neither."""
    batch = engine.get_batch(batch_id)
    if batch["status"] not in ("validating", "in_progress"):
        return "late"
    return "mid-batch" if batch["request_counts"]["completed"] >= start + 20 else None


def test_a_killed_worker_is_resumed_without_writing_a_row_twice(tmp_path):
    with BatchEngine(tmp_path / "data", worker="none", faults=FaultPlan(row_delay=0.01, seed=2, row_failures={500: 0.2})) as engine:
        batch = submit(engine, tmp_path, [chat_line(i) for i in range(300)])
        command = [sys.executable, "-m", "batch_pipelines.local_service.worker", str(engine.data_dir)]
        kills = []
        for _ in range(3):  # kill it mid-batch, three times
            worker = subprocess.Popen(command)
            start = engine.get_batch(batch["id"])["request_counts"]["completed"]
            kills.append(wait_until(partial(_kill_point, engine, batch["id"], start), interval=0.01))
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        assert "mid-batch" in kills, "no worker was killed with rows left"
        worker = subprocess.Popen(command)
        try:
            final = wait_for_batch(engine, batch["id"])
        finally:
            worker.kill()
            worker.wait()
        assert final["status"] == "completed"
        output, errors = file_lines(engine, final["output_file_id"]), file_lines(engine, final["error_file_id"])
        seen = Counter(x["custom_id"] for x in output + errors)
        assert set(seen.values()) == {1} and len(seen) == 300
        assert final["request_counts"] == {"total": 300, "completed": len(output), "failed": len(errors)}
