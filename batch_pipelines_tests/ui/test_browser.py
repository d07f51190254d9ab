"""The demo as a newcomer meets it: ``dagster dev`` on 127.0.0.1 driven by a headless browser.

``dagster dev`` serves the demo code location from ``workspace.yaml`` on a free port, with a
temporary DAGSTER_HOME holding the project's ``dagster.yaml`` (the local provider taking
``SECONDS_PER_REQUEST`` per request, so a day's batch runs for most of a minute; the sensor ticking
every second). Debian's chromium, driven by Playwright, opens the asset graph, launches the submit
job for one day from the Materialize dialog, and, while the batch runs, finds it in flight on the
batch asset's events page: not materialized, in progress, with its batch id and a part of its
requests done, as the sensor's latest observation of that day says. It waits until the results run has succeeded and
finds the batch done on the batch asset's page and the row counts, the cost in USD and the columns
on the results asset's page. Screenshots are saved to ``.artifacts/ui/`` (and ``failure.png`` there
when a step fails).

Needs ``/usr/bin/chromium`` (``make browser`` installs it; the test never downloads a browser).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from batch_pipelines_tests.support.local_http import free_port, graphql

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCATION = "batch_pipelines_demo"
DAY = "2026-03-04"
ROWS = 50  # texts shipped for each demo day
SECONDS_PER_REQUEST = 0.8  # a day's batch then runs for 40 s: long enough to be seen in flight
PARTLY_DONE = re.compile(rf"^([0-9]|[1-4][0-9]) of {ROWS} requests done")

_T = TypeVar("_T")


@dataclass
class DagsterDev:
    url: str
    home: Path
    log: Path
    process: subprocess.Popen[bytes]

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        return graphql(self.url, query, timeout=10, **variables)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def wait_for(what: str, check: Callable[[], _T | None], *, timeout: float, dev: DagsterDev | None = None) -> _T:
    """Poll ``check`` until it returns something other than None; fail on the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if dev is not None and dev.process.poll() is not None:
            pytest.fail(f"dagster dev exited ({dev.process.returncode}) while waiting for {what}:\n{dev.log_tail()}")
        if time.monotonic() > deadline:
            detail = f"\n--- dagster dev log ---\n{dev.log_tail()}" if dev else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium (as root or with sudo)")
    return CHROMIUM


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_PIPELINES_")}
    env.update(
        DAGSTER_HOME=str(home),
        BATCH_PIPELINES_LOCAL_SPEED="instant",
        BATCH_PIPELINES_LOCAL_SECONDS_PER_REQUEST=str(SECONDS_PER_REQUEST),
        BATCH_PIPELINES_SENSOR_INTERVAL="1",
        BATCH_PIPELINES_WORKER_IDLE="5",
    )
    log = home / "dagster_dev.log"
    with log.open("wb") as out:
        # Started in the temporary home, like `make run` in its own: no stray files, no warnings.
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = DagsterDev(f"http://127.0.0.1:{port}", home, log, process)
    try:
        wait_for("the webserver to answer /server_info", lambda: _server_info(dev), timeout=90, dev=dev)
        wait_for("the demo code location to load", lambda: _location_loaded(dev), timeout=90, dev=dev)
        yield dev
    finally:
        _stop(process)


def _server_info(dev: DagsterDev) -> bool | None:
    try:
        with urllib.request.urlopen(f"{dev.url}/server_info", timeout=5) as response:
            return True if response.status == 200 else None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _location_loaded(dev: DagsterDev) -> bool | None:
    data = dev.graphql(
        "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus"
        " locationOrLoadError { __typename ... on PythonError { message } } } } } }"
    )
    for entry in data["workspaceOrError"]["locationEntries"]:
        if entry["name"] == LOCATION and entry["loadStatus"] == "LOADED":
            loaded = entry["locationOrLoadError"]
            if loaded["__typename"] == "PythonError":
                pytest.fail(f"the demo code location failed to load: {loaded['message']}")
            return True
    return None


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop dagster dev and everything it started (same process group): politely, then not."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # run workers or code servers left behind
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


def _materialized(dev: DagsterDev, asset: str, day: str) -> bool:
    """Whether Dagster counts ``asset``'s partition ``day`` as materialized (what the partitions bar shows)."""
    ranges = dev.graphql(_MATERIALIZED, path=[asset])["assetNodeOrError"]["assetPartitionStatuses"]["ranges"]
    return any(r["status"] == "MATERIALIZED" and r["startKey"] <= day <= r["endKey"] for r in ranges)


_MATERIALIZED = """
query Materialized($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { assetPartitionStatuses { ... on TimePartitionStatuses { ranges { status startKey endKey } } } }
  }
}
"""

_RUNS = """
query Runs($filter: RunsFilter!) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId jobName status tags { key value } } }
    ... on PythonError { message }
  }
}
"""


def _runs(dev: DagsterDev, **tags: str) -> list[dict[str, Any]]:
    data = dev.graphql(_RUNS, filter={"tags": [{"key": k, "value": v} for k, v in tags.items()]})
    runs = data["runsOrError"]
    assert runs["__typename"] == "Runs", runs
    return runs["results"]


def _succeeded_run(dev: DagsterDev, job: str) -> dict[str, Any] | None:
    """The day's run of ``job`` once it succeeded; fails as soon as a run of the day failed."""
    runs = _runs(dev, **{"dagster/partition": DAY})
    failed = [r for r in runs if r["status"] in ("FAILURE", "CANCELED")]
    if failed:
        pytest.fail(f"run {failed[0]['runId']} ({failed[0]['jobName']}) for {DAY} ended {failed[0]['status']}")
    return next((r for r in runs if r["jobName"] == job and r["status"] == "SUCCESS"), None)


def _metadata_row(page: Any, key: str, *, column: int = -1) -> Any:
    """The value cell of metadata entry ``key`` in the page's metadata table: the last one on the
    asset page, the second (``column=1``) on the events page, whose table has a column more."""
    cells = page.get_by_role("row").filter(has=page.get_by_role("cell", name=key, exact=True)).first.get_by_role("cell")
    return cells.last if column == -1 else cells.nth(column)


def _in_flight_on_page(page: Any, dev: DagsterDev) -> bool | None:
    """Whether the batch asset's events page shows the day's batch running (a part of its requests
    done); reloads it otherwise. Fails if the batch ended before the page showed it so."""
    if _materialized(dev, "classify_texts_batch", DAY):
        pytest.fail(f"the batch of {DAY} ended before its page showed it in progress")
    progress = _metadata_row(page, "progress", column=1)
    try:
        progress.wait_for(timeout=30_000)  # the events load slowly on a busy machine
    except Exception:  # noqa: BLE001 - no progress on the page yet: the sensor has not polled
        page.reload()
        return None
    text = progress.inner_text()
    print(f"progress on the page: {text}")
    if PARTLY_DONE.match(text):
        return True
    page.reload()
    return None


def _finished_results_run(dev: DagsterDev) -> dict[str, Any] | None:
    """The day's results run once it succeeded; fails as soon as any run of the day failed."""
    runs = _runs(dev, **{"dagster/partition": DAY})
    failed = [r for r in runs if r["status"] in ("FAILURE", "CANCELED")]
    if failed:
        pytest.fail(f"run {failed[0]['runId']} ({failed[0]['jobName']}) for {DAY} ended {failed[0]['status']}")
    results = [r for r in runs if any(t["key"] == "batch_pipelines/pipeline" for t in r["tags"])]
    return next((r for r in results if r["status"] == "SUCCESS"), None)


@pytest.mark.timeout(420)  # our own deadlines fail first, with a message and a screenshot
def test_materialize_from_the_ui_and_watch_the_sensor_finish(chromium: str, dagster_dev: DagsterDev) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)  # a loaded machine renders slowly; nothing here should take that long
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    url = dagster_dev.url
    started = time.monotonic()

    def shot(name: str) -> None:
        # Elapsed times go to the captured output: shown with the failure, they say which step was slow.
        page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
        print(f"{time.monotonic() - started:6.1f}s  {name}")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(30_000)
        try:
            # 1. The asset graph shows the whole pipeline.
            page.goto(f"{url}/asset-groups")
            for name in ("texts", "classify_texts_requests", "classify_texts_batch", "classify_texts_results"):
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
            shot("01_asset_graph")

            # 2. Materialize the submit job's assets for one day from the job's asset graph.
            page.goto(f"{url}/locations/{LOCATION}/jobs/classify_texts_submit")
            page.get_by_role("button", name="Materialize all…").click()
            dialog = page.get_by_role("dialog")
            expect(dialog.get_by_text("Launch runs to materialize 3 assets")).to_be_visible()
            partitions = dialog.get_by_placeholder("ex: 2026-03-02", exact=False)
            partitions.fill(DAY)
            partitions.press("Enter")
            launch = dialog.get_by_role("button", name="Launch 1 run")
            expect(launch).to_be_enabled()
            shot("02_materialize_dialog")
            launch.click()
            expect(page.get_by_text("Launched run")).to_be_visible()
            shot("03_launched")

            # 3. While the batch runs: the batch asset is not materialized; its events page shows
            # the day's latest progress observation from the sensor, in progress with the batch id.
            wait_for("the submit run to succeed", lambda: _succeeded_run(dagster_dev, "classify_texts_submit"), timeout=150, dev=dagster_dev)
            page.goto(f"{url}/assets/classify_texts_batch?view=events&partition={DAY}")
            wait_for("the batch's events to show it in progress", lambda: _in_flight_on_page(page, dagster_dev), timeout=90, dev=dagster_dev)
            expect(page.get_by_text(f"Partition {DAY} observed")).to_be_visible()
            expect(_metadata_row(page, "status", column=1)).to_have_text("in_progress")
            expect(_metadata_row(page, "batch_ids", column=1)).to_contain_text("batch_")
            shot("04_batch_in_flight")

            # 4. The batch ends: the sensor materializes the batch asset and launches the results run.
            run = wait_for(
                "the sensor's results run to succeed", lambda: _finished_results_run(dagster_dev), timeout=150, dev=dagster_dev
            )
            page.goto(f"{url}/runs/{run['runId']}")
            expect(page.get_by_text("Launched by classify_texts_sensor")).to_be_visible()
            expect(page.get_by_text("Success", exact=True).first).to_be_visible()
            expect(page.get_by_text("Finished execution of run").first).to_be_visible()
            shot("05_results_run")

            # 5. The batch asset's page: materialized, done, with the final figures.
            assert _materialized(dagster_dev, "classify_texts_batch", DAY)
            page.goto(f"{url}/assets/classify_texts_batch?partition={DAY}")
            expect(_metadata_row(page, "status")).to_have_text("completed")
            expect(_metadata_row(page, "progress")).to_have_text(f"{ROWS} of {ROWS} requests done (100%), 0 failed")
            shot("06_batch_done")

            # 6. The results asset's page shows the day's row counts, the cost in USD and the columns.
            page.goto(f"{url}/assets/classify_texts_results?partition={DAY}")
            expect(page.get_by_text(DAY).first).to_be_visible()
            for key, value in (("rows", ROWS), ("succeeded", ROWS), ("failed", 0), ("missing", 0)):
                expect(_metadata_row(page, key), f"metadata {key}").to_have_text(str(value))
            cost = _metadata_row(page, "cost_usd")
            expect(cost).to_have_text(re.compile(r"^0\.\d+$"))
            assert float(cost.inner_text()) > 0
            columns = page.get_by_role("row").filter(has=page.get_by_role("cell", name="output_category", exact=True)).first
            expect(columns.get_by_role("cell").nth(1)).to_have_text("string")
            shot("07_results_asset")
        except BaseException:
            try:
                shot("failure")
            except Exception as exc:  # noqa: BLE001 - the original failure matters more
                print(f"no failure screenshot: {exc}")
            raise
        finally:
            browser.close()
