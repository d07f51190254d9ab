"""The reliability scenarios: the pipeline end to end under each fault, with every row counted.

Each scenario plays one fault in a fresh :class:`~batch_pipelines_tests.reliability.world.World`
(a temporary Dagster instance, the local batch service over HTTP, a 200-row table over two daily
partitions) and checks its own expectations; :func:`run_scenario` then measures rows in, rows
accounted for, batches created, duplicate submissions and final outcome counts.

Every scenario runs on each profile of ``support/profiles.py`` (the service posing as OpenAI, then
as Anthropic), except where its fault cannot happen on that provider (``not_on`` says why; the
skip and its reason are printed).

``python -m batch_pipelines_tests.reliability [--profile NAME] [name ...]`` (``make reliability``)
prints one table per profile, one row per fault, then ``reliability <profile>: faults=N rows_lost=0
duplicate_submissions=0 wrong_answers=0`` per profile and the same line for all, ``reliability:
...``, exiting 1 if any row was lost, paid twice, unaccounted for or answered for other content,
or an expectation failed. ``test_scenarios.py`` runs the same scenarios under pytest.
"""

import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg

from batch_pipelines.local_service import FaultPlan, HttpFault
from batch_pipelines.pipeline.ledger import is_submission
from batch_pipelines_tests.support.child_runs import CRASH_EXIT, start_child
from batch_pipelines_tests.support.profiles import PROFILES
from batch_pipelines_tests.reliability.world import (
    KEY,
    PARTITIONS,
    Measured,
    Scenario,
    ServedProcess,
    World,
    batch_faults,
    every_endpoint,
    expect,
    run_scenario,
)

__all__ = ["SCENARIOS", "main", "table"]

SCENARIOS: list[Scenario] = []
FIRST, SECOND = PARTITIONS


def scenario(fault: str, **setting: Any) -> Callable[[Callable[[World], None]], Callable[[World], None]]:
    def register(play: Callable[[World], None]) -> Callable[[World], None]:
        SCENARIOS.append(Scenario(fault, play, **setting))
        return play

    return register


def all_succeeded(world: World) -> None:
    outcomes = Counter(world.results()["outcome"].astype(str))
    expect(set(outcomes) == {"succeeded"}, f"outcomes {dict(outcomes)}")


def one_batch_per_shard(world: World) -> None:
    count = len(world.batches())
    expect(count == len(world.partitions), f"{count} batches for {len(world.partitions)} shards")


@scenario("none (baseline)")
def baseline(world: World) -> None:
    world.submit()
    world.drive()
    all_succeeded(world)
    one_batch_per_shard(world)


@scenario("HTTP 429 storm with Retry-After, every endpoint", resource={"delete_files_after_download": True})
def rate_limited(world: World) -> None:
    # Each endpoint refuses its first 3 calls; creating a batch is refused 7 times in a row, more
    # than the client retries (5): that run fails, and is launched again.
    routes = world.profile.routes
    faults = every_endpoint(world.profile, status=429, retry_after=0.05, times=3)
    faults += (HttpFault(route=routes.create, method="POST", status=429, retry_after=0.05, times=7),)
    world.service.set_faults(FaultPlan(http_faults=faults))
    world.submit()
    world.drive()
    all_succeeded(world)
    one_batch_per_shard(world)
    expect(world.failed_runs >= 1, "the create storm outlasted the client's retries: a run should have failed")


@scenario("HTTP 5xx bursts (500, 502, 503), every endpoint", resource={"delete_files_after_download": True})
def server_errors(world: World) -> None:
    faults = every_endpoint(world.profile, status=500, times=1) + every_endpoint(world.profile, status=503, retry_after=0.05, times=2)
    # A gateway's 502 once the service created the batch: the create took effect, its answer is lost.
    faults += (HttpFault(route=world.profile.routes.create, method="POST", status=502, after=True, times=1),)
    world.service.set_faults(FaultPlan(http_faults=faults))
    world.submit()
    world.drive()
    all_succeeded(world)
    one_batch_per_shard(world)


@scenario("connection resets, every endpoint", resource={"delete_files_after_download": True})
def connection_resets(world: World) -> None:
    routes = world.profile.routes
    faults = every_endpoint(world.profile, drop=True, times=1) + (
        HttpFault(route=routes.create, method="POST", drop=True, after=True, times=1),  # created, answer lost
        HttpFault(route=routes.results, method="GET", drop=True, after=True, times=1),
    )
    world.service.set_faults(FaultPlan(http_faults=faults))
    world.submit()
    world.drive()
    all_succeeded(world)
    one_batch_per_shard(world)


@scenario("responses slower than the client timeout", resource={"request_timeout_seconds": 1.0})
def slow_responses(world: World) -> None:
    # Every create is served, then answered after the client gave up waiting: it must find the
    # batch it created, not create another.
    late = dict(status=None, delay=1.5, after=True)
    routes = world.profile.routes
    faults = (
        HttpFault(route=routes.create, method="POST", times=None, **late),
        HttpFault(route=routes.retrieve, method="GET", times=1, **late),
        HttpFault(route=routes.results, method="GET", times=1, **late),
    )
    world.service.set_faults(FaultPlan(http_faults=faults))
    world.submit()
    world.drive()
    all_succeeded(world)
    one_batch_per_shard(world)


@scenario(
    "batch validation failure (invalid file)",
    pipeline={"batch_tags": batch_faults({FIRST: FaultPlan(validation_error="invalid_file_format")})},
    not_on={
        "anthropic": "requests are sent inline: there is no input file to find invalid",
        "gemini": "shards under 20 MB are sent inline: there is no input file to find invalid",
    },
)
def invalid_file(world: World) -> None:
    world.submit()
    world.drive()
    frame = world.harness.results(FIRST)
    expect(set(frame["outcome"]) == {"failed"} and set(frame["error_code"]) == {"invalid_file_format"}, "rows failed with the batch's error")
    expect(set(world.harness.results(SECOND)["outcome"]) == {"succeeded"}, "the other day is untouched")
    one_batch_per_shard(world)  # a file the provider finds invalid is reported, not sent again


@scenario(
    "batch validation failure: token_limit_exceeded (queue full)",
    not_on={
        "anthropic": "no batch fails validation for a full queue: Anthropic refuses the create with a 429 (the 429 storm)",
        "gemini": "no batch fails validation for a full queue (token_limit_exceeded is OpenAI's): a spent quota is a 429 on the create (the 429 storm)",
    },
)
def queue_full(world: World) -> None:
    world.service.set_faults(FaultPlan(validation_error="token_limit_exceeded"))
    world.submit()
    refused = world.wait_batches(lambda bs: all(b["status"] == "failed" for b in bs), what="the refusals")
    world.service.set_faults(FaultPlan())  # the queue drains
    expect(not world.tick().run_requests, "the refused shards must wait resubmit_delay before going again")
    world.drive()
    all_succeeded(world)
    count = len(world.batches())
    expect(count == 2 * len(refused), f"{count} batches: each refused shard should go exactly once more")
    expect(world.metadata(world.pipeline.results_asset, FIRST)["attempts"] == 1, "a full queue costs the rows no attempt")


@scenario(
    "expiry with partial output",
    service={"time_scale": 86400 / 3},  # the 24h window lasts 3 s
    pipeline={"batch_tags": batch_faults({None: FaultPlan(row_delay=0.05)})},  # 100 rows would take 5 s
)
def expiry(world: World) -> None:
    world.submit()
    world.drive()
    all_succeeded(world)
    first = world.first_batches()
    expect({b["status"] for b in first} == {"expired"}, f"statuses {[b['status'] for b in first]}")
    expect(all(b["output_file_id"] for b in first), "an expired batch returns the rows it finished")
    attempts = Counter(world.results()["attempt"].tolist())
    expect(attempts[1] and attempts[2], f"rows per attempt {dict(attempts)}: finished rows kept, the rest sent again")


@scenario("cancellation mid-flight", pipeline={"batch_tags": batch_faults({None: FaultPlan(row_delay=0.05)})})
def cancellation(world: World) -> None:
    world.submit()
    world.wait_batches(
        lambda bs: all(b["status"] == "in_progress" and b["request_counts"]["completed"] >= 5 for b in bs),
        what="batches half way",
    )
    job = world.harness.defs.resolve_job_def(world.pipeline.cancel_job.name)
    config = {"ops": {"classify_cancel_batches": {"config": {"partitions": list(world.partitions)}}}}
    expect(job.execute_in_process(instance=world.instance, run_config=config).success, "the cancel job failed")
    world.drive()
    outcomes = Counter(world.results()["outcome"].astype(str))
    expect(set(outcomes) == {"succeeded", "cancelled"}, f"outcomes {dict(outcomes)}")
    one_batch_per_shard(world)  # cancelled rows are not sent again


@scenario(
    "completed batch with no output file",
    pipeline={"batch_tags": batch_faults({FIRST: FaultPlan(row_failures={500: 1.0}), SECOND: FaultPlan(no_output_file=True)})},
)
def no_output_file(world: World) -> None:
    world.submit()
    world.drive()
    all_succeeded(world)
    first = world.first_batches()
    expect(all(b["status"] == "completed" and b["output_file_id"] is None for b in first), "completed, without output file")


@scenario("rows missing from both files", pipeline={"batch_tags": batch_faults({None: FaultPlan(missing_rows=7, seed=4)})})
def missing_rows(world: World) -> None:
    world.submit()
    world.drive()
    all_succeeded(world)
    expect((world.results()["attempt"] == 2).sum() == 14, "the 7 missing rows of each day were sent again")


@scenario("corrupt result lines", pipeline={"batch_tags": batch_faults({None: FaultPlan(corrupt_lines=3, seed=5)})})
def corrupt_lines(world: World) -> None:
    world.submit()
    world.drive()
    all_succeeded(world)
    found = world.metadata(world.pipeline.results_asset, FIRST)["corrupt_lines"]
    expect(found == 3, f"corrupt_lines metadata {found}, wanted 3")


@scenario(
    "duplicate and unknown custom_ids",
    pipeline={"batch_tags": batch_faults({None: FaultPlan(duplicate_lines=4, unknown_lines=3, seed=6)})},
)
def duplicate_and_unknown_ids(world: World) -> None:
    world.submit()
    world.drive()
    all_succeeded(world)
    meta = world.metadata(world.pipeline.results_asset, FIRST)
    found = (meta["duplicate_lines"], meta["unknown_lines"])
    expect(found == (4, 3), f"duplicate and unknown lines in the metadata: {found}, wanted (4, 3)")


@scenario(
    "service killed and restarted on its data dir",
    subprocess=True,
    pipeline={"batch_tags": batch_faults({None: FaultPlan(row_delay=0.05)}), "sensor_tick_budget_seconds": 1.0},
)
def service_restarted(world: World) -> None:
    served = world.service
    assert isinstance(served, ServedProcess)
    world.submit()
    world.wait_batches(
        lambda bs: all(b["status"] == "in_progress" and b["request_counts"]["completed"] >= 10 for b in bs),
        what="batches in progress",
    )
    served.kill()
    for _ in range(2):
        expect(not world.tick().run_requests, "nothing is launched while the service is down")
    served.start()
    world.drive()
    all_succeeded(world)
    one_batch_per_shard(world)  # the batches resumed where they stopped; none was submitted again
    meta = world.metadata(world.pipeline.results_asset, FIRST)
    expect(meta["duplicate_lines"] == 0 and meta["attempts"] == 1, "a resumed batch wrote no row twice")


@scenario("submitting run killed between the provider's accept and Dagster's record")
def crash_after_accept(world: World) -> None:
    h = world.harness
    world.run([h.texts, h.pipeline.requests_asset], FIRST)
    child = start_child(
        "crash", world.service.base_url, world.storage, FIRST, home=world.instance.root_directory, key=KEY,
        env=world.child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # submits FIRST; fmt: skip
    _, stderr = child.communicate(timeout=120)
    expect(child.returncode == CRASH_EXIT, f"the child should die right after the accept: {stderr.decode()[-300:]}")
    expect(len(world.batches()) == 1, "the provider accepted the batch")
    world.submit()  # the killed run launched again, and the other day
    expect(h.submission(FIRST)["reattached"] == 1, "the accepted batch is re-attached")
    world.drive()
    all_succeeded(world)
    one_batch_per_shard(world)


@scenario("sensor (daemon) restarted mid-poll", pipeline={"batch_tags": batch_faults({None: FaultPlan(row_delay=0.04)})})
def daemon_restarted(world: World) -> None:
    world.submit()
    world.tick()
    saved = world.harness.cursor
    world.wait_batches(lambda bs: all(b["status"] == "completed" for b in bs), what="batches done")
    lost = world.evaluate()  # the daemon dies in this tick: its cursor, events and runs are never stored
    expect(lost.run_requests, "the lost tick would have launched results runs")
    world.restart_daemon(saved)
    tick = world.harness.tick()  # this daemon launches one run, then dies before storing its cursor
    expect(tick.run_requests, "the restarted daemon finds the finished batches")
    world.launch(tick.run_requests[0])
    world.restart_daemon(saved)
    world.drive()
    all_succeeded(world)
    keys = world.launched_run_keys()
    covered = world.launched_partitions()
    expect(set(keys.values()) == {1}, f"runs per run key {dict(keys)}")
    expect(covered == Counter(world.partitions), f"results runs per partition {dict(covered)}")


@scenario("two submits of one partition racing")
def racing_submits(world: World) -> None:
    h = world.harness
    for partition in world.partitions:
        world.run([h.texts, h.pipeline.requests_asset], partition)
    # Lists are answered late, as they were when the call came: without the lock, both runs would
    # miss the other's batch and create their own.
    slow_list = HttpFault(route=world.profile.routes.list, method="GET", status=None, delay=1.5, after=True, times=2)
    world.service.set_faults(FaultPlan(http_faults=(slow_list,)))
    codes = world.race_submits(FIRST, [world.storage, world.storage])
    expect(codes == [0, 0], f"racing runs exited {codes}")
    world.run([h.pipeline.batch_asset], SECOND)
    world.drive()
    all_succeeded(world)
    one_batch_per_shard(world)
    submitted = sorted(m.get("submitted") for m in _submissions(world, FIRST))
    expect(submitted == [0, 1], f"one run submitted, the other re-attached: {submitted}")


@scenario("source changed in flight", pipeline={"batch_tags": batch_faults({None: FaultPlan(row_delay=0.03)})})
def source_changed(world: World) -> None:
    world.submit()
    expect(any(b["status"] != "completed" for b in world.batches()), "the batches are still running")
    world.change_texts({3: " (corrected)", 42: " (corrected)"})
    for partition in world.partitions:
        world.run([world.harness.texts], partition)  # the source alone: its request files and batches stay
    world.drive()
    all_succeeded(world)
    resent = world.results().query("attempt == 2")
    expect(len(resent) == 2 * len(world.partitions), f"only the corrected rows go again: {len(resent)} rows")


@scenario("template changed in flight", pipeline={"batch_tags": batch_faults({None: FaultPlan(row_delay=0.05)})})
def template_changed(world: World) -> None:
    world.submit()
    old = [b["id"] for b in world.batches()]
    world.change_spec(messages=[{"role": "user", "content": "Which category is this text in? {text}"}])
    world.submit()  # the new prompt's request files, then its batches: the old ones are superseded
    ended = {b["id"]: b["status"] for b in world.batches() if b["id"] in old}
    expect(set(ended.values()) <= {"cancelling", "cancelled"}, f"the superseded batches are cancelled: {ended}")
    world.drive()
    all_succeeded(world)
    expect(len(world.batches()) == 2 * len(world.partitions), "one new batch per partition beside the cancelled ones")


def _submissions(world: World, partition: str) -> list[dict[str, Any]]:
    """The partition's submissions recorded by ``<name>_batch`` (observations), latest first."""
    records = world.instance.fetch_observations(
        dg.AssetRecordsFilter(world.pipeline.batch_asset.key, asset_partitions=[partition]), limit=1000
    ).records
    metadata = [r.asset_observation.metadata for r in records]
    return [{k: getattr(v, "value", v) for k, v in m.items()} for m in metadata if is_submission(m)]


# ---- the table --------------------------------------------------------------------------------------


def table(rows: Sequence[tuple[Scenario, Measured]]) -> str:
    """One row per fault: rows in, accounted for, batches, duplicates, lost, then the outcome counts."""
    header = ("fault", "rows in", "accounted", "batches", "duplicates", "lost", "wrong answers", "run retries", "seconds", "outcomes")
    cells = [
        (
            s.fault,
            *(str(v) for v in (m.rows_in, m.rows_accounted, m.batches, m.duplicate_submissions, m.rows_lost, m.wrong_answers, m.failed_runs)),
            f"{m.seconds:.1f}",
            " ".join(f"{k}={v}" for k, v in m.outcomes.items()) + ("" if m.ok else f"  FAILED: {m.problem or 'counts'}"),
        )
        for s, m in rows
    ]
    widths = [max(len(c) for c in column) for column in zip(header, *cells)]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in (0, len(row) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, cells)])


def main(argv: Sequence[str] | None = None) -> int:
    """``[--profile NAME] [scenario ...]``: the chosen scenarios (all by default) on each profile."""
    args = list(sys.argv[1:] if argv is None else argv)
    profiles = list(PROFILES.values())
    if "--profile" in args:
        at = args.index("--profile")
        wanted = args[at + 1 : at + 2]
        del args[at : at + 2]
        if not wanted or wanted[0] not in PROFILES:
            print(f"reliability: --profile takes one of {list(PROFILES)}", file=sys.stderr)
            return 2
        profiles = [PROFILES[wanted[0]]]
    chosen = [s for s in SCENARIOS if not args or s.name in args]
    if len(chosen) != len(args or SCENARIOS):
        print(f"reliability: unknown scenario in {args}; known: {[s.name for s in SCENARIOS]}", file=sys.stderr)
        return 2
    started = time.monotonic()
    progress = sys.stderr
    summaries: list[tuple[str, list[Measured]]] = []
    for profile in profiles:
        done: list[tuple[Scenario, Measured]] = []
        # Dagster logs every run event to stderr: the table is the report.
        with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):
            for s in chosen:
                if profile.name in s.not_on:
                    print(f"reliability {profile.name}: {s.name}: skipped: {s.not_on[profile.name]}", file=progress, flush=True)
                    continue
                done.append((s, run_scenario(s, profile)))
                verdict = "ok" if done[-1][1].ok else "FAILED"
                print(f"reliability {profile.name}: {s.name}: {verdict} in {done[-1][1].seconds:.1f}s", file=progress, flush=True)
        print(f"{profile.name}:")
        print(table(done))
        skipped = [s for s in chosen if profile.name in s.not_on]
        for s in skipped:
            print(f"  skipped on {profile.name}: {s.fault}: {s.not_on[profile.name]}")
        print()
        summaries.append((profile.name, [m for _, m in done]))
    print(f"reliability: {sum(len(m) for _, m in summaries)} scenario runs in {time.monotonic() - started:.0f}s", file=progress)
    for name, measured in summaries:
        print(f"reliability {name}: {_totals(measured)}")
    everything = [m for _, ms in summaries for m in ms]
    print(f"reliability: {_totals(everything)}")
    return 0 if all(m.ok for m in everything) else 1


def _totals(measured: Sequence[Measured]) -> str:
    lost = sum(m.rows_lost for m in measured)
    duplicates = sum(m.duplicate_submissions for m in measured)
    wrong = sum(m.wrong_answers for m in measured)
    return f"faults={len(measured)} rows_lost={lost} duplicate_submissions={duplicates} wrong_answers={wrong}"
