"""The world a reliability scenario runs in, driven as a Dagster deployment would drive it, and measured.

A :class:`World` is a fresh temporary Dagster instance, the local batch service over HTTP (a thread
of this process, or a ``batch-pipelines serve`` process that can be killed) and the classification
pipeline of the Dagster tests (``harness.py``: 100 short texts a day, two days). It drives them
like a deployment: runs materialize the assets and a failed run is launched again (Dagster's run
retries); the sensor is evaluated tick after tick from its saved cursor, its observations are
stored and each run it requests is launched unless a run with its run key exists (the daemon's
rule). :meth:`World.measure` then counts, from what Dagster stored and what the service holds:

- rows in, and rows accounted for: found exactly once in the results, with an outcome other than
  ``missing`` (sent and never answered, after every retry);
- batches: every batch the service created;
- duplicate submissions: batches beyond the first for one (fingerprint, partition, attempt), among
  batches that ran. A batch failed at validation ran nothing and costs nothing: submitting its
  shard again after a full token queue is the remedy, not a duplicate.
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from batch_pipelines.local_service import FAULTS_METADATA_KEY, BatchEngine, FaultPlan, HttpFault, create_app
from batch_pipelines.resources import PARTITION_TAG
from batch_pipelines_tests.conftest import LocalService, ServerThread
from batch_pipelines_tests.dagster.harness import KEY_ENV, Harness, build, make_resource, make_texts
from batch_pipelines_tests.dagster.test_pipeline import service_batches

__all__ = [
    "KEY",
    "PARTITIONS",
    "ROWS",
    "Measured",
    "Scenario",
    "ServedProcess",
    "World",
    "batch_faults",
    "every_endpoint",
    "expect",
    "open_world",
    "run_scenario",
]

#: The service key of every scenario: recognisable, so a leak would be easy to find.
KEY = "sk-reliability-3c9e1f0a7b5d"
#: Rows per partition, and the partitions: a 200-row table in two days.
ROWS = 100
PARTITIONS = ("2024-01-01", "2024-01-02")
#: How many times a failed run is launched again (Dagster's run retries) before the scenario fails.
RUN_RETRIES = 3
#: Resource settings of every scenario over the harness's (which polls without delay).
RESOURCE: dict[str, Any] = {"resubmit_delay_seconds": 0.5}
FINGERPRINT_TAG, ATTEMPT_TAG = "bp_fingerprint", "bp_attempt"
_RUN_KEY_TAG = "dagster/run_key"
_REPO = Path(__file__).resolve().parents[2]
_DROPPED = "ASGI callable returned without completing response."


@dataclass(frozen=True)
class Scenario:
    """One fault: how its world is set up, and what is done to it (``play`` asserts its own expectations)."""

    fault: str
    play: Callable[["World"], None]
    #: build_batch_pipeline options (batch_tags carry per-batch fault plans).
    pipeline: Mapping[str, Any] = field(default_factory=dict)
    #: BatchProviderResource settings over RESOURCE.
    resource: Mapping[str, Any] = field(default_factory=dict)
    #: BatchEngine options of the service (time_scale...), or ``serve`` options of the process.
    service: Mapping[str, Any] = field(default_factory=dict)
    #: Serve from a ``batch-pipelines serve`` process (which can be killed) instead of a thread.
    subprocess: bool = False

    @property
    def name(self) -> str:
        return self.play.__name__.strip("_")


@dataclass(frozen=True)
class Measured:
    """What a scenario ended with."""

    rows_in: int
    rows_accounted: int
    batches: int
    duplicate_submissions: int
    outcomes: dict[str, int]
    failed_runs: int = 0
    seconds: float = 0.0
    #: Why the scenario did not finish, or which of its own expectations failed (None: all held).
    problem: str | None = None

    @property
    def rows_lost(self) -> int:
        return self.rows_in - self.rows_accounted

    @property
    def ok(self) -> bool:
        return (
            self.problem is None
            and self.rows_lost == 0
            and self.duplicate_submissions == 0
            and sum(self.outcomes.values()) == self.rows_in
        )


@dataclass
class World:
    """A temporary Dagster instance, the local service over HTTP and the pipeline."""

    scenario: Scenario
    root: Path
    instance: dg.DagsterInstance
    service: LocalService
    harness: Harness
    partitions: tuple[str, ...] = PARTITIONS
    #: Runs that failed and were launched again.
    failed_runs: int = 0

    @property
    def pipeline(self) -> Any:
        return self.harness.pipeline

    @property
    def storage(self) -> Path:
        return Path(self.harness.resource.storage_dir or "")

    # ---- runs and ticks ------------------------------------------------------------------------
    def run(self, selection: Sequence[Any], partition: str | None, *, tags: Mapping[str, str] | None = None) -> dg.ExecuteInProcessResult:
        """One run, launched again while it fails (at most RUN_RETRIES times)."""
        for _ in range(RUN_RETRIES + 1):
            result = self.harness.materialize(selection, partition, raise_on_error=False, tags=dict(tags or {}))
            if result.success:
                return result
            self.failed_runs += 1
        raise AssertionError(f"a run of {partition} failed {RUN_RETRIES + 1} times: {_failure(result)}")

    def submit(self, partitions: Sequence[str] | None = None) -> None:
        """texts -> requests -> batch, one run per partition."""
        h = self.harness
        for partition in partitions or self.partitions:
            self.run([h.texts, h.pipeline.requests_asset, h.pipeline.batch_asset], partition)

    def evaluate(self) -> Any:
        """One sensor evaluation from the saved cursor, nothing stored (a tick the daemon dies in)."""
        h = self.harness
        with dg.build_sensor_context(
            instance=self.instance, cursor=h.cursor, definitions=h.defs, resources={"batch_provider": h.resource}
        ) as context:
            return h.pipeline.sensor.evaluate_tick(context)

    def tick(self) -> Any:
        """A daemon tick: evaluate from the saved cursor, store it and its observations, launch its runs."""
        tick = self.harness.tick()
        for request in tick.run_requests:
            self.launch(request)
        return tick

    def launch(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult | None:
        """Launch a requested run unless a run with its run key exists."""
        key = {_RUN_KEY_TAG: request.run_key or ""}
        if request.run_key and self.instance.get_runs(dg.RunsFilter(tags=key), limit=1):
            return None
        selection = list(request.asset_selection or [self.pipeline.results_asset.key])
        return self.run(selection, request.partition_key, tags={**request.tags, **key})

    def drive(self, *, timeout: float = 60.0) -> None:
        """Tick until every partition's results are materialized."""
        deadline = time.monotonic() + timeout
        while missing := set(self.partitions) - self.harness.materialized_results():
            if time.monotonic() > deadline:
                raise AssertionError(f"no results after {timeout}s for {sorted(missing)}")
            if not self.tick().run_requests:
                time.sleep(0.05)  # the sensor's pace (its minimum interval)

    def restart_daemon(self, cursor: str | None) -> None:
        """A new daemon process: the code loaded again, the sensor evaluated from ``cursor``."""
        h = self.harness
        self.harness = Harness(self.instance, build(source=h.texts, **self.scenario.pipeline), h.texts, h.resource, cursor=cursor)

    def race_submits(self, partition: str, storages: Sequence[Path]) -> list[int]:
        """Runs submitting ``partition`` at the same moment, one process each (with its storage dir); their exit codes."""
        env = {**os.environ, "DAGSTER_HOME": self.instance.root_directory, KEY_ENV: KEY}
        command = [sys.executable, "-m", "batch_pipelines_tests.reliability.child", self.service.base_url]
        racers = [
            subprocess.Popen([*command, str(storage), partition], cwd=_REPO, env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            for storage in storages
        ]  # fmt: skip
        try:
            for racer in racers:  # all loaded (Dagster imports take seconds), then all at once
                expect(racer.stdout and racer.stdout.readline().strip() == "ready", "a racer did not start")
            for racer in racers:
                assert racer.stdin is not None
                racer.stdin.write("go\n")
                racer.stdin.close()
            return [racer.wait(timeout=120) for racer in racers]
        finally:
            for racer in racers:
                if racer.poll() is None:
                    racer.kill()
                    racer.wait()
                if racer.stdout:
                    racer.stdout.close()

    def launched_run_keys(self) -> Counter[str]:
        return Counter(r.tags[_RUN_KEY_TAG] for r in self.instance.get_runs() if r.tags.get(_RUN_KEY_TAG))

    # ---- what the service and Dagster hold ---------------------------------------------------------
    def batches(self) -> list[dict[str, Any]]:
        return service_batches(self.service)

    def first_batches(self) -> list[dict[str, Any]]:
        return [b for b in self.batches() if b["metadata"][ATTEMPT_TAG] == "1"]

    def wait_batches(self, condition: Callable[[list[dict[str, Any]]], bool], *, what: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            batches = self.batches()
            if condition(batches):
                return batches
            if time.monotonic() > deadline:
                statuses = [(b["id"], b["status"], b["request_counts"]) for b in batches]
                raise AssertionError(f"{what} not reached after {timeout}s: {statuses}")
            time.sleep(0.02)

    def metadata(self, asset: dg.AssetsDefinition, partition: str) -> dict[str, Any]:
        return self.harness.latest_metadata(asset, partition)

    def results(self) -> pd.DataFrame:
        return pd.concat([self.harness.results(p) for p in self.partitions], ignore_index=True)

    def measure(self) -> Measured:
        h = self.harness
        rows_in = accounted = 0
        outcomes: Counter[str] = Counter()
        done = h.materialized_results()
        for partition in self.partitions:
            source = h.defs.load_asset_value(h.texts.key, partition_key=partition, instance=self.instance)
            rows_in += len(source)
            if partition not in done:
                continue
            results = h.results(partition)
            outcomes.update(results["outcome"].astype(str))
            seen = results["text_id"].value_counts()
            answered = set(results.loc[results["outcome"] != "missing", "text_id"])
            accounted += len(set(source["text_id"]) & set(seen[seen == 1].index) & answered)
        batches = self.batches()
        ran = Counter(
            tuple(b["metadata"].get(k) for k in (FINGERPRINT_TAG, PARTITION_TAG, ATTEMPT_TAG))
            for b in batches
            if b["status"] != "failed" or b["in_progress_at"] is not None
        )
        return Measured(
            rows_in=rows_in,
            rows_accounted=accounted,
            batches=len(batches),
            duplicate_submissions=sum(n - 1 for n in ran.values()),
            outcomes=dict(sorted(outcomes.items())),
            failed_runs=self.failed_runs,
        )


@contextmanager
def open_world(scenario: Scenario) -> Iterator[World]:
    """The world of one scenario; everything it started is stopped and removed on exit."""
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bp-reliability-", ignore_cleanup_errors=True)))
        stack.enter_context(_environ(KEY_ENV, KEY))
        stack.enter_context(_quiet_drops())
        (root / "dagster").mkdir()
        instance = stack.enter_context(dg.instance_for_test(temp_dir=str(root / "dagster")))
        if scenario.subprocess:
            service: LocalService = stack.enter_context(ServedProcess(root / "service", scenario.service))
        else:
            engine = BatchEngine(root / "service", **scenario.service)
            stack.callback(engine.close)
            app = create_app(engine, api_key=KEY)
            server = ServerThread(app)
            stack.callback(server.stop)
            service = LocalService(f"{server.url}/v1", KEY, engine, engine.data_dir, app)
        texts = make_texts(ROWS)
        resource = make_resource(service.base_url, root / "storage", **{**RESOURCE, **scenario.resource})
        yield World(scenario, root, instance, service, Harness(instance, build(source=texts, **scenario.pipeline), texts, resource))


def run_scenario(scenario: Scenario) -> Measured:
    """Play one scenario in a fresh world and measure it; a failed expectation becomes ``problem``."""
    started = time.monotonic()
    with open_world(scenario) as world:
        problem = None
        try:
            scenario.play(world)
        except AssertionError as exc:
            problem = (str(exc).splitlines() or ["assertion failed"])[0][:300]
        measured = world.measure()
    return replace(measured, seconds=time.monotonic() - started, problem=problem)


class ServedProcess(LocalService):
    """``batch-pipelines serve`` in its own process on a fixed port, to kill and start again on the same data."""

    def __init__(self, data_dir: Path, options: Mapping[str, Any]) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        # This process reads the service's state on disk, as any process on the data dir may.
        engine = BatchEngine(data_dir, worker="none")
        super().__init__(f"http://127.0.0.1:{port}/v1", KEY, engine, engine.data_dir, None)
        self.port = port
        self.options = dict(options)
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> "ServedProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.engine.close()

    def start(self) -> None:
        command = [sys.executable, "-m", "batch_pipelines.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        command += [f"--{k.replace('_', '-')}={v}" for k, v in self.options.items()]
        env = {**os.environ, "BATCH_PIPELINES_LOCAL_API_KEY": KEY}  # not on the command line, where ps shows it
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ready = self.process.stdout.readline() if self.process.stdout else ""
        if f":{self.port}/v1" not in ready:
            self.kill()
            raise AssertionError(f"the service did not start: {ready!r}")

    def kill(self) -> None:
        """SIGKILL: no clean-up; the worker thread dies in the middle of its batches."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        if self.process.stdout:
            self.process.stdout.close()
        self.process = None

    def set_faults(self, plan: FaultPlan) -> None:
        raise NotImplementedError("a served process has the fault plan it was started with")


# ---- helpers of the scenarios -----------------------------------------------------------------


def batch_faults(plans: Mapping[str | None, FaultPlan], *, attempt: int = 1) -> Callable[[str | None, int], dict[str, str]]:
    """Batch tags putting ``plans[partition]`` (``plans[None]``: any partition) on one attempt's batches."""

    def tags(partition: str | None, at: int) -> dict[str, str]:
        plan = plans.get(partition, plans.get(None))
        return {FAULTS_METADATA_KEY: plan.to_json()} if plan is not None and at == attempt else {}

    return tags


def every_endpoint(**fault: Any) -> tuple[HttpFault, ...]:
    """One rule per endpoint the pipeline calls, each counting its own ``times``."""
    routes = [
        ("POST", "/v1/files"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches"),
        ("GET", "/v1/batches/batch_*"),
        ("GET", "/v1/files/*/content"),
        ("DELETE", "/v1/files/*"),
    ]
    return tuple(HttpFault(route=route, method=method, **fault) for method, route in routes)


def expect(condition: Any, message: str) -> None:
    """A scenario's own expectation (``assert`` may be compiled away; this may not)."""
    if not condition:
        raise AssertionError(message)


@contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


@contextmanager
def _quiet_drops() -> Iterator[None]:
    """uvicorn logs each deliberately dropped connection as an error: they are the fault, not news."""
    log = logging.getLogger("uvicorn.error")

    def keep(record: logging.LogRecord) -> bool:
        return record.getMessage() != _DROPPED

    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return "; ".join(str(e.message) for e in result.all_events if e.is_failure)[:500] or "unknown failure"
