"""The world a reliability scenario runs in, driven as a Dagster deployment would drive it, and measured.

A :class:`World` is a fresh temporary Dagster instance, the local batch service over HTTP (a thread
of this process, or a ``batch-pipelines serve`` process that can be killed) and the classification
pipeline of the Dagster tests, 100 short texts a day for two days, run by their driver
(``support/driver.py``) like a deployment: runs materialize the assets and a failed run is
launched again (Dagster's run retries); the sensor is evaluated tick after tick from its saved
cursor, its observations are stored and each run it requests is launched unless a run with its
run key exists (the daemon's rule). :meth:`World.measure` then counts, from what Dagster stored and what the service holds:

- rows in, and rows accounted for: found exactly once in the results, with an outcome other than
  ``missing`` (sent and never answered, after every retry);
- batches: every batch the service created;
- duplicate submissions: batches beyond the first for one (fingerprint, partition, attempt), among
  batches that ran. A batch failed at validation ran nothing and costs nothing: submitting its
  shard again after a full token queue is the remedy, not a duplicate. Where batches carry no
  metadata (Anthropic), counted from the content the service was sent (``duplicates.py``).

A world runs on a provider profile (``support/profiles.py``): the service posing as OpenAI or as
Anthropic, the resource's ``provider`` and the spec to match. Anthropic batches carry no tags, so
the per-batch fault plans of :func:`batch_faults` become the service's plan, set for each
partition's submit and cleared after it (the retries run clean, as with tags on attempt 1).
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
import httpx
import pandas as pd

from batch_pipelines.local_service import FAULTS_METADATA_KEY, BatchEngine, FaultPlan, HttpFault
from batch_pipelines.submission import ATTEMPT_TAG, FINGERPRINT_TAG, PARTITION_TAG, RecordedBatches
from batch_pipelines_tests.support.child_runs import start_child
from batch_pipelines_tests.reliability.duplicates import ran, recorded_tags, unrecorded_duplicates
from batch_pipelines_tests.support.driver import KEY_ENV, RUN_KEY_TAG, Harness, build, make_resource, make_texts, partitions_of_tags
from batch_pipelines_tests.support.instances import scratch_dir
from batch_pipelines_tests.support.profiles import OPENAI, Profile
from batch_pipelines_tests.support.service import LocalService, sent_fingerprints, service_batches, start_service
from batch_pipelines_tests.support.waiting import wait_until

__all__ = [
    "KEY",
    "BatchFaults",
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
    #: Profile name -> why the fault cannot happen on that provider (the scenario is skipped there).
    not_on: Mapping[str, str] = field(default_factory=dict)

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
    #: Succeeded rows whose answer is to a request other than the one their content makes now.
    wrong_answers: int = 0
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
            and self.wrong_answers == 0
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
    #: Row position -> text appended to that row of every day's source from now on (see change_texts).
    corrections: dict[int, str]
    profile: Profile = OPENAI
    partitions: tuple[str, ...] = PARTITIONS

    @property
    def pipeline(self) -> Any:
        return self.harness.pipeline

    @property
    def storage(self) -> Path:
        return Path(self.harness.resource.storage_dir or "")

    @property
    def failed_runs(self) -> int:
        """Runs that failed and were launched again."""
        return self.harness.failed_runs

    # ---- runs and ticks: the driver's ----------------------------------------------------------
    def run(self, selection: Sequence[Any], partition: str | None, *, tags: Mapping[str, str] | None = None) -> dg.ExecuteInProcessResult:
        return self.harness.run(selection, partition, tags=tags)

    def submit(self, partitions: Sequence[str] | None = None) -> None:
        faults = self.scenario.pipeline.get("batch_tags")
        if self.profile.batch_metadata or not isinstance(faults, BatchFaults):
            self.harness.submit(partitions or self.partitions)
            return
        # No batch tags to carry the plans: the service's plan while each partition submits.
        for partition in partitions or self.partitions:
            self.service.set_faults(faults.plan(partition) or FaultPlan())
            try:
                self.harness.submit([partition])
            finally:
                self.service.set_faults(FaultPlan())

    def evaluate(self) -> Any:
        return self.harness.evaluate()

    def tick(self) -> Any:
        return self.harness.tick(launch=True)

    def launch(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult | None:
        return self.harness.launch(request)

    def drive(self) -> None:
        self.harness.drive(self.partitions)

    def change_texts(self, corrections: Mapping[int, str]) -> None:
        """Correct some rows of the source (same keys, other text); materialized again by the next run of ``texts``."""
        self.corrections.update(corrections)

    def change_spec(self, **changes: Any) -> None:
        """A new version of the code: the pipeline built with its request spec changed (a new prompt, say)."""
        h = self.harness
        spec = self.profile.spec.model_copy(update=changes)
        pipeline = build(source=h.texts, spec=spec, **self.scenario.pipeline)
        self.harness = Harness(self.instance, pipeline, h.texts, h.resource, cursor=h.cursor, run_retries=RUN_RETRIES, failed_runs=h.failed_runs)

    def restart_daemon(self, cursor: str | None) -> None:
        """A new daemon process: the code loaded again, the sensor evaluated from ``cursor``."""
        h = self.harness
        pipeline = build(source=h.texts, spec=self.profile.spec, **self.scenario.pipeline)
        self.harness = Harness(self.instance, pipeline, h.texts, h.resource, cursor=cursor, run_retries=RUN_RETRIES, failed_runs=h.failed_runs)

    def race_submits(self, partition: str, storages: Sequence[Path], homes: Sequence[str] | None = None) -> list[int]:
        """Runs submitting ``partition`` at the same moment, one process each (with its storage dir and
        Dagster home: this world's instance unless ``homes`` says otherwise); their exit codes."""
        racers = [
            start_child("race", self.service.base_url, storage, partition, home=home, key=KEY,
                        env=self.child_env(), text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL)
            for storage, home in zip(storages, homes or [self.instance.root_directory] * len(storages), strict=True)
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

    def child_env(self) -> dict[str, str]:
        """What a run in a process of its own needs to run this world's pipeline (``child_runs.py``)."""
        return {"CHILD_ROWS": str(ROWS), "CHILD_PROFILE": self.profile.name}

    def launched_run_keys(self) -> Counter[str]:
        return Counter(r.tags[RUN_KEY_TAG] for r in self.instance.get_runs() if r.tags.get(RUN_KEY_TAG))

    def launched_partitions(self) -> Counter[str]:
        """How many runs launched for a run key (the sensor's) covered each partition."""
        return Counter(p for r in self.instance.get_runs() if r.tags.get(RUN_KEY_TAG) for p in partitions_of_tags(r.tags))

    # ---- what the service and Dagster hold ---------------------------------------------------------
    def batches(self) -> list[dict[str, Any]]:
        return service_batches(self.service)

    def batch_tags(self) -> dict[str, dict[str, str]]:
        """Each batch's tags: its metadata (Gemini's: its displayName), or what the pipeline recorded where batches keep none."""
        if self.profile.tags is not None:
            return {b["id"]: self.profile.tags(b) for b in self.batches()}
        if self.profile.batch_metadata:
            return {b["id"]: b["metadata"] or {} for b in self.batches()}
        return recorded_tags(self.records_root)

    @property
    def records_root(self) -> Path:
        """Where the resource records the tags of batches that keep none."""
        with self.harness.resource.get_provider() as provider:
            if isinstance(provider, RecordedBatches):
                return provider.storage.local_path(provider.folder)
            return self.storage / "_none"

    def first_batches(self) -> list[dict[str, Any]]:
        tags = self.batch_tags()
        return [b for b in self.batches() if tags.get(b["id"], {}).get(ATTEMPT_TAG) == "1"]

    def wait_batches(self, condition: Callable[[list[dict[str, Any]]], bool], *, what: str) -> list[dict[str, Any]]:
        """The service's batches once ``condition`` holds for them (``what`` names it for a reader)."""

        def met() -> tuple[list[dict[str, Any]]] | None:
            batches = self.batches()
            return (batches,) if condition(batches) else None

        return wait_until(met)[0]

    def metadata(self, asset: dg.AssetsDefinition, partition: str) -> dict[str, Any]:
        return self.harness.latest_metadata(asset, partition)

    def results(self) -> pd.DataFrame:
        return pd.concat([self.harness.results(p) for p in self.partitions], ignore_index=True)

    def measure(self) -> Measured:
        h = self.harness
        rows_in = accounted = wrong = 0
        answered_batches: set[str] = set()
        outcomes: Counter[str] = Counter()
        sent = sent_fingerprints(self.service)
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
            succeeded = results[results["outcome"] == "succeeded"]
            # A reused answer was bought under another custom_id: not found, not judged.
            went = [
                (sent.get((self.profile.service_batch_id(str(batch_id)), cid)), fp)
                for batch_id, cid, fp in zip(succeeded["batch_id"], succeeded["custom_id"], succeeded["request_fingerprint"])
            ]
            wrong += sum(found is not None and found != fp for found, fp in went)
            answered_batches.update(self.profile.service_batch_id(str(b)) for b in succeeded["batch_id"])
        batches = self.batches()
        if self.profile.batch_metadata or self.profile.tags is not None:
            tags = self.batch_tags()
            meant = Counter(tuple(tags[b["id"]].get(k) for k in (FINGERPRINT_TAG, PARTITION_TAG, ATTEMPT_TAG)) for b in batches if ran(b))
            duplicates = sum(n - 1 for n in meant.values())
        else:
            duplicates = unrecorded_duplicates(self.service, batches, self.records_root)
        measured = Measured(
            rows_in=rows_in,
            rows_accounted=accounted,
            batches=len(batches),
            duplicate_submissions=duplicates,
            outcomes=dict(sorted(outcomes.items())),
            failed_runs=self.failed_runs,
            wrong_answers=wrong,
        )
        sent_batches = {batch_id for batch_id, _ in sent}
        if sent_batches and answered_batches and not sent_batches & answered_batches:
            # The service kept what it was sent, yet no answering batch is among it: the check compares nothing.
            return replace(measured, problem=f"no answering batch {sorted(answered_batches)[:3]} is one the service knows")
        return measured


@contextmanager
def open_world(scenario: Scenario, profile: Profile = OPENAI) -> Iterator[World]:
    """The world of one scenario; everything it started is stopped and removed on exit."""
    with ExitStack() as stack:
        # In memory where there is some (support/instances.py): a scenario stores thousands of events.
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bp-reliability-", dir=scratch_dir(), ignore_cleanup_errors=True)))
        stack.enter_context(_environ(KEY_ENV, KEY))
        stack.enter_context(_quiet_drops())
        (root / "dagster").mkdir()
        instance = stack.enter_context(dg.instance_for_test(temp_dir=str(root / "dagster")))
        if scenario.subprocess:
            options = {"profile": profile.service_profile, **scenario.service}
            service: LocalService = stack.enter_context(ServedProcess(root / "service", options))
        else:
            service = start_service(root / "service", api_key=KEY, profile=profile.service_profile, **scenario.service)
            stack.callback(service.stop)
        corrections: dict[int, str] = {}
        texts = make_texts(ROWS, edit=lambda frame: _corrected(frame, corrections))
        settings = {**RESOURCE, "provider": profile.provider, **profile.resource, **scenario.resource}
        resource = make_resource(service.base_url, root / "storage", **settings)
        pipeline = build(source=texts, spec=profile.spec, **scenario.pipeline)
        harness = Harness(instance, pipeline, texts, resource, run_retries=RUN_RETRIES)
        yield World(scenario, root, instance, service, harness, corrections, profile)


def run_scenario(scenario: Scenario, profile: Profile = OPENAI) -> Measured:
    """Play one scenario in a fresh world on ``profile`` and measure it; a failed expectation becomes ``problem``."""
    started = time.monotonic()
    with open_world(scenario, profile) as world:
        problem = None
        try:
            scenario.play(world)
        except AssertionError as exc:
            problem = (str(exc).splitlines() or ["assertion failed"])[0][:300]
        measured = world.measure()
    return replace(measured, seconds=time.monotonic() - started, problem=problem or measured.problem)


class ServedProcess(LocalService):
    """``batch-pipelines serve`` in its own process on a fixed port, to kill and start again on the same data."""

    def __init__(self, data_dir: Path, options: Mapping[str, Any]) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        # This process reads the service's state on disk, as any process on the data dir may.
        engine = BatchEngine(data_dir, worker="none")
        super().__init__(f"http://127.0.0.1:{port}/v1", KEY, engine, engine.data_dir, app=None, server=None)  # type: ignore[arg-type]
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
        """The service-wide plan over HTTP (the process's local extension); a restart starts clean."""
        response = httpx.put(f"{self.base_url}/_local/faults", content=plan.model_dump_json(), headers={"Authorization": f"Bearer {KEY}"})
        response.raise_for_status()


def _corrected(frame: pd.DataFrame, corrections: Mapping[int, str]) -> pd.DataFrame:
    if not corrections:
        return frame
    text = frame["text"].copy()
    for row, suffix in corrections.items():
        text.iloc[row] = f"{text.iloc[row]}{suffix}"
    return frame.assign(text=text)


# ---- helpers of the scenarios -----------------------------------------------------------------


@dataclass(frozen=True)
class BatchFaults:
    """Batch tags putting ``plans[partition]`` (``plans[None]``: any partition) on one attempt's
    batches (the pipeline's ``batch_tags``); where batches take no tags, ``World.submit`` sets
    :meth:`plan` as the service's plan instead."""

    plans: Mapping[str | None, FaultPlan]
    attempt: int = 1

    def plan(self, partition: str | None) -> FaultPlan | None:
        return self.plans.get(partition, self.plans.get(None))

    def __call__(self, partition: str | None, at: int) -> dict[str, str]:
        plan = self.plan(partition)
        return {FAULTS_METADATA_KEY: plan.to_json()} if plan is not None and at == self.attempt else {}


def batch_faults(plans: Mapping[str | None, FaultPlan], *, attempt: int = 1) -> BatchFaults:
    return BatchFaults(plans, attempt)


def every_endpoint(profile: Profile, **fault: Any) -> tuple[HttpFault, ...]:
    """One rule per endpoint the pipeline calls on ``profile``, each counting its own ``times``."""
    return tuple(HttpFault(route=route, method=method, **fault) for method, route in profile.routes.every())


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
