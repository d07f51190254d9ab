"""Benchmark: a backfill of 1,000,000 rows over 100 daily partitions, as a deployment runs it.

Everything is real and on this machine: a throwaway PostgreSQL server holds the Dagster instance;
moto's S3 server holds every file the plugin keeps and the asset values (no shared disk);
``batch-pipelines serve`` answers the OpenAI Batch API over HTTP at instant speed; and
``dagster-daemon`` and ``dagster-webserver`` run as separate processes on the code location in
``scale_location.py``. The backfill is launched through the webserver's GraphQL API, as the UI's
**Launch backfill** does (the source, the requests and the batch asset for every day); the
pipeline's sensor polls the batches and asks for the results. Midway, once the sensor has asked
for results, the daemon is killed with SIGKILL and started again.

It prints the wall time from launch until every day's results are materialized, the runs created
(submit runs from the backfill, results runs from the sensor), the longest sensor tick, the
largest stored cursor, the peak RSS of any run worker, and checks the outcome: every row once in
the results (read back from the bucket), one batch per day at the service. In the same run it
does the same over ``--baseline-partitions`` days of the same size (rows per day) with one run per
partition (the way before backfill policies), and prints the time per partition and the run
workers' peak RSS as ratios: a run over ten days holds one day (one shard) at a time, so its peak
is about that of a run over one day, not ten times it.
Targets: wall_s <= 900, at most 10 submit and 10 results runs, max_tick_s <= 10, cursor_kb <= 8,
peak_mb bounded by one shard, not by the partitions (peak_vs_baseline near 1).

    .venv/bin/python benchmarks/bench_scale.py [--rows 1000000] [--partitions 100]

Last line: ``bench scale: rows=... partitions=... wall_s=... runs=... max_tick_s=... cursor_kb=... peak_mb=...``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dagster._core.storage.tags import RETRY_NUMBER_TAG, WILL_RETRY_TAG  # noqa: E402 - Dagster's run tags, not exported

from batch_pipelines.submission.tags import PARTITION_TAG  # noqa: E402
from batch_pipelines_tests.support.local_http import free_port, graphql  # noqa: E402
from batch_pipelines_tests.support.postgres import PostgresServer, start_postgres  # noqa: E402

BIN = Path(sys.executable).parent
KEY = "sk-bench-scale"
PIPELINE = "scale"
FIRST_DAY = dt.date(2026, 1, 1)
DEADLINE_S = 3600  # the benchmark gives up (and says so) rather than hang


def _wait(what: str, check: Any, *, timeout: float = 120, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while (value := check()) in (None, False):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench scale: gave up waiting for {what}")
        time.sleep(interval)
    return value


@dataclass
class Servers:
    """What both backfills share: PostgreSQL, the S3 server, the local batch service."""

    postgres: PostgresServer
    s3_url: str
    s3: Any
    service_url: str
    service: subprocess.Popen

    def stop(self) -> None:
        self.service.terminate()
        self.service.wait(timeout=30)
        if self.s3 is not None:
            self.s3.stop()
        self.postgres.stop()


def start_servers(work: Path, *, storage: str) -> Servers:
    s3, s3_url = None, ""
    if storage == "s3":
        from moto.server import ThreadedMotoServer

        from batch_pipelines_tests.support.object_storage import S3_ENV

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per S3 request
        os.environ.update(S3_ENV)
        s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        s3.start()
        host, port = s3.get_host_and_port()
        s3_url = f"http://{host}:{port}"
    service_port = free_port()
    service = subprocess.Popen(
        [BIN / "batch-pipelines", "serve", "--port", str(service_port), "--data-dir", str(work / "service"), "--profile", "openai", "--speed", "instant"],
        env={**os.environ, "BATCH_PIPELINES_LOCAL_API_KEY": KEY},
        stdout=(work / "service.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    service_url = f"http://127.0.0.1:{service_port}/v1"

    def serving() -> bool:
        try:
            return httpx.get(f"{service_url}/batches", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    _wait("the local service", serving)
    return Servers(start_postgres(), s3_url, s3, service_url, service)


class Deployment:
    """dagster-daemon and dagster-webserver on one PostgreSQL database and one bucket."""

    def __init__(self, servers: Servers, work: Path, *, rows: int, partitions: int, per_run: int, storage: str, first_day: dt.date) -> None:
        self.work = work
        self.earlier_batches = {b["id"] for b in _service_batches(servers)}  # the other backfill's
        self.partitions = [str(first_day + dt.timedelta(days=i)) for i in range(partitions)]
        database = f"bench_{uuid.uuid4().hex[:8]}"
        servers.postgres.execute(f"CREATE DATABASE {database}")
        self.pg_url = servers.postgres.url(database)
        if storage == "s3":
            import s3fs

            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            s3fs.S3FileSystem(endpoint_url=servers.s3_url).mkdir(bucket)
            self.storage = f"s3://{bucket}"
        else:  # a local folder: to compare, or where no S3 server can be had
            self.storage = str(work / "storage")
        self.s3_url = servers.s3_url
        self.service_url = servers.service_url
        self.home = work / "home"
        self.home.mkdir(parents=True)
        config = (ROOT / "dagster.yaml").read_text().split("\nstorage:")[0]  # the demo's settings, without SQLite
        tail = (ROOT / "dagster.yaml").read_text().split("\nrun_queue:")[1]
        (self.home / "dagster.yaml").write_text(
            config + "\nstorage:\n  postgres:\n    postgres_url:\n      env: BENCH_PG_URL\nrun_queue:" + tail
        )
        (self.home / "workspace.yaml").write_text(
            f"load_from:\n  - python_file:\n      relative_path: {ROOT / 'benchmarks' / 'scale_location.py'}\n"
            f"      working_directory: {ROOT}\n      location_name: scale\n"
        )
        end = first_day + dt.timedelta(days=partitions)
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "BENCH_PG_URL": self.pg_url,
            "BENCH_ROWS": str(rows // partitions),
            "BENCH_PER_RUN": str(per_run),
            "BENCH_START_DATE": str(first_day),
            "BENCH_END_DATE": str(end),
            "BENCH_BASE_URL": self.service_url,
            "BENCH_STORAGE": self.storage,
            "OPENAI_API_KEY": KEY,
            "BENCH_S3_ENDPOINT": self.s3_url if storage == "s3" else "",
        }
        # The schema first: a webserver and a daemon creating it at once on a new database race (one dies).
        subprocess.run([BIN / "dagster", "instance", "migrate"], cwd=self.home, env=self.env, check=True, capture_output=True)
        self.port = free_port()
        self.groups: list[int] = []
        self.webserver = self._start("webserver", [BIN / "dagster-webserver", "-h", "127.0.0.1", "-p", str(self.port), "-w", self.home / "workspace.yaml"])
        self.daemon = self._start("daemon", [BIN / "dagster-daemon", "run", "-w", self.home / "workspace.yaml"])
        self.daemon_restarts = 0

    def _start(self, name: str, command: list[Any]) -> subprocess.Popen:
        log = (self.work / f"{name}.log").open("ab")
        process = subprocess.Popen(command, cwd=self.home, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.groups.append(process.pid)  # its code servers and run workers are in its group, also once it is killed
        return process

    def kill_daemon(self) -> None:
        """SIGKILL the daemon (its threads die mid-tick), then start a new one."""
        os.kill(self.daemon.pid, signal.SIGKILL)
        self.daemon.wait()
        self.daemon = self._start("daemon", [BIN / "dagster-daemon", "run", "-w", self.home / "workspace.yaml"])
        self.daemon_restarts += 1

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        return graphql(f"http://127.0.0.1:{self.port}", query, timeout=60, **variables)

    def wait_loaded(self) -> None:
        def loaded() -> bool:
            try:
                data = self.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }")
            except OSError:
                return False
            for entry in data["workspaceOrError"]["locationEntries"]:
                if entry["loadStatus"] == "LOADED":
                    if entry["locationOrLoadError"]["__typename"] == "PythonError":
                        raise SystemExit(f"the code location failed to load: {entry['locationOrLoadError']['message']}")
                    return True
            return False

        _wait("the code location", loaded, timeout=180)

    def launch_backfill(self) -> str:
        assets = [{"path": ["texts"]}, {"path": [f"{PIPELINE}_requests"]}, {"path": [f"{PIPELINE}_batch"]}]
        data = self.graphql(
            "mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {"
            " __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }",
            p={"assetSelection": assets, "partitionNames": self.partitions},
        )["launchPartitionBackfill"]
        if data["__typename"] != "LaunchBackfillSuccess":
            raise SystemExit(f"the backfill was not launched: {data}")
        return data["backfillId"]

    def stop(self) -> None:
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        for process in (self.daemon, self.webserver):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for group in self.groups:  # code servers orphaned by the killed daemon, stragglers
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


def _run_worker_peaks(peaks: dict[int, int]) -> None:
    """Record each live run worker's peak resident memory (VmHWM: the kernel keeps the maximum).

    A run worker is what a code server (``dagster api grpc``) starts for a run: a multiprocessing
    child of it."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"spawn_main" not in (proc / "cmdline").read_bytes():
                continue
            status = (proc / "status").read_text()
            parent = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
            if b"api\x00grpc" not in Path(f"/proc/{parent}/cmdline").read_bytes():
                continue
        except (OSError, StopIteration):
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks[int(proc.name)] = max(peaks.get(int(proc.name), 0), int(line.split()[1]))


def run_backfill(
    servers: Servers, work: Path, *, rows: int, partitions: int, per_run: int, kill_daemon: bool, storage: str, first_day: dt.date = FIRST_DAY
) -> dict[str, Any]:
    import dagster as dg

    deployment = Deployment(servers, work, rows=rows, partitions=partitions, per_run=per_run, storage=storage, first_day=first_day)
    peaks: dict[int, int] = {}
    try:
        deployment.wait_loaded()
        os.environ["DAGSTER_HOME"] = str(deployment.home)
        os.environ["BENCH_PG_URL"] = deployment.pg_url
        with dg.DagsterInstance.get() as instance:
            started = time.monotonic()
            deployment.launch_backfill()
            results_key = dg.AssetKey(f"{PIPELINE}_results")
            killed, killed_at = not kill_daemon, None
            while True:
                _run_worker_peaks(peaks)
                runs = instance.get_runs()
                # A run the killed daemon was launching never starts: run monitoring fails it, and
                # run retries (dagster.yaml) run it again. Only a failure not retried is fatal.
                retried = {r.parent_run_id for r in runs if r.tags.get(RETRY_NUMBER_TAG)}
                failed = [
                    r for r in runs
                    if r.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
                    and r.run_id not in retried and r.tags.get(WILL_RETRY_TAG) != "true"
                ]  # fmt: skip
                if failed:
                    raise SystemExit(f"bench scale: run {failed[0].run_id} ended {failed[0].status}: {_failure(instance, failed[0].run_id)}")
                if not killed and any(r.tags.get("dagster/sensor_name") for r in runs):
                    deployment.kill_daemon()
                    killed, killed_at = True, time.time()
                done = instance.get_materialized_partitions(results_key)
                if len(done) == partitions and all(r.is_finished for r in runs) and not any(r.tags.get(WILL_RETRY_TAG) == "true" and r.run_id not in retried for r in runs):
                    break
                if time.monotonic() - started > DEADLINE_S:
                    raise SystemExit(f"bench scale: {len(done)} of {partitions} days joined after {DEADLINE_S} s")
                time.sleep(0.5)
            wall = time.monotonic() - started
            figures = _figures(instance, runs, killed_at)
        figures.update(wall_s=wall, peak_mb=max(peaks.values(), default=0) / 1024, daemon_kills=deployment.daemon_restarts)
        figures.update(_outcome(deployment, servers, rows))
        return figures
    finally:
        deployment.stop()


def _failure(instance: Any, run_id: str) -> str:
    import dagster as dg

    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and event.event_type in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
            error = getattr(event.event_specific_data, "error", None)
            return error.to_string() if error is not None else (event.message or "")
    return "no failure event"


def _figures(instance: Any, runs: list[Any], killed_at: float | None) -> dict[str, Any]:
    """The runs, and the sensor's ticks: the longest (but the one the daemon was killed in, which
    the next daemon finished: its length is the restart's), the largest stored cursor."""
    sensor = next(s for s in instance.all_instigator_state() if s.instigator_name == f"{PIPELINE}_sensor")
    ticks = instance.get_ticks(sensor.instigator_origin_id, sensor.selector_id, limit=100_000)
    ended = [t for t in ticks if t.end_timestamp and not (killed_at and t.timestamp <= killed_at <= t.end_timestamp)]
    resumed = [t.end_timestamp - t.timestamp for t in ticks if t.end_timestamp and killed_at and t.timestamp <= killed_at <= t.end_timestamp]
    if os.environ.get("BENCH_SCALE_TICKS"):
        for t in sorted(ended, key=lambda t: t.timestamp):
            print(f"tick {t.status.value:8} {t.end_timestamp - t.timestamp:6.2f}s runs={len(t.run_ids)} {t.tick_data.skip_reason or ''}"[:160])
    first = [r for r in runs if not r.tags.get(RETRY_NUMBER_TAG)]  # retries counted apart
    return {
        "runs": len(first),
        "submit_runs": sum(1 for r in first if r.tags.get("dagster/backfill")),
        "results_runs": sum(1 for r in first if r.tags.get("dagster/sensor_name")),
        "retried_runs": len(runs) - len(first),
        # Each results run's days (start..end), in the order they were created.
        "results_ranges": [
            f"{r.tags.get('dagster/asset_partition_range_start', r.tags.get('dagster/partition'))}..{r.tags.get('dagster/asset_partition_range_end', '')}"
            for r in reversed(first) if r.tags.get("dagster/sensor_name")
        ],
        "ticks": len(ticks),
        "max_tick_s": max((t.end_timestamp - t.timestamp for t in ended), default=0.0),
        # The three longest, with the runs each asked for: a long tick that launched runs, or one that polled.
        "longest_ticks": [
            [round(t.end_timestamp - t.timestamp, 2), len(t.run_ids)]
            for t in sorted(ended, key=lambda t: t.end_timestamp - t.timestamp, reverse=True)[:3]
        ],
        "resumed_tick_s": max(resumed, default=0.0),
        "cursor_kb": max((len(t.cursor or "") for t in ticks), default=0) / 1024,
    }


def _outcome(deployment: Deployment, servers: Servers, rows: int) -> dict[str, Any]:
    """Every row once in the results (read from the bucket), one batch per day at the service."""
    import pyarrow.parquet as pq

    fs = None
    if deployment.storage.startswith("s3://"):
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=servers.s3_url)
    ids: list[str] = []
    for day in deployment.partitions:
        path = f"{deployment.storage}/values/{PIPELINE}_results/{day}.parquet".removeprefix("s3://")
        table = pq.read_table(path, filesystem=fs, columns=["text_id"])
        ids.extend(table.column("text_id").to_pylist())
    counts = Counter(ids)
    batches = [b for b in _service_batches(servers) if b["id"] not in deployment.earlier_batches]
    per_day = Counter(b["metadata"][PARTITION_TAG] for b in batches)
    return {
        "result_rows": len(ids),
        "distinct_rows": len(counts),
        "batches": len(batches),
        "days_with_one_batch": sum(1 for day in deployment.partitions if per_day.get(day) == 1),
        "ok": len(ids) == rows and len(counts) == rows and all(per_day.get(d) == 1 for d in deployment.partitions) and len(per_day) == len(deployment.partitions),
    }


def _service_batches(servers: Servers) -> list[dict[str, Any]]:
    """Every batch the service holds (both backfills share it), newest first."""
    found, after = [], None
    while True:
        params = {"limit": 100, **({"after": after} if after else {})}
        page = httpx.get(f"{servers.service_url}/batches", params=params, headers={"Authorization": f"Bearer {KEY}"}, timeout=60).json()
        found.extend(page["data"])
        if not page.get("has_more"):
            return found
        after = page["data"][-1]["id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=100)
    parser.add_argument("--per-run", type=int, default=10, help="max_partitions_per_run of the big backfill")
    parser.add_argument("--baseline-partitions", type=int, default=10, help="days of the one-run-per-day backfill, each of rows/partitions rows")
    parser.add_argument("--storage", choices=["s3", "local"], default="s3", help="where the plugin's files and the values live")
    parser.add_argument("--no-baseline", action="store_true", help="the big backfill alone (no ratio)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    servers = start_servers(work, storage=args.storage)
    try:
        big = run_backfill(servers, work / "scale", rows=args.rows, partitions=args.partitions, per_run=args.per_run, kill_daemon=True, storage=args.storage)
        print(f"scale: {json.dumps(big)}", flush=True)
        baseline = big if args.no_baseline else run_backfill(
            servers, work / "baseline", rows=args.rows // args.partitions * args.baseline_partitions, partitions=args.baseline_partitions,
            per_run=1, kill_daemon=False, storage=args.storage,
            # Days of their own: the same days' batches at the service would be re-attached, not sent.
            first_day=FIRST_DAY + dt.timedelta(days=args.partitions),
        )
        print(f"baseline (one run per partition): {json.dumps(baseline)}", flush=True)
    finally:
        servers.stop()
    per_partition = (big["wall_s"] / args.partitions) / (baseline["wall_s"] / args.baseline_partitions)
    peak_ratio = big["peak_mb"] / baseline["peak_mb"]
    if not (big["ok"] and baseline["ok"]):
        raise SystemExit("bench scale: rows lost, repeated or batched twice (see the figures above)")
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"bench scale: rows={big['result_rows']} partitions={args.partitions} wall_s={big['wall_s']:.0f} runs={big['runs']} "
        f"submit_runs={big['submit_runs']} results_runs={big['results_runs']} max_tick_s={big['max_tick_s']:.2f} "
        f"cursor_kb={big['cursor_kb']:.2f} peak_mb={big['peak_mb']:.0f} daemon_kills={big['daemon_kills']} retried_runs={big['retried_runs']} "
        f"baseline_rows={baseline['result_rows']} baseline_partitions={args.baseline_partitions} "
        f"per_partition_vs_baseline={per_partition:.2f} peak_vs_baseline={peak_ratio:.2f}"
    )


if __name__ == "__main__":
    main()
