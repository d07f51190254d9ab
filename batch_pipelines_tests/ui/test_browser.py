"""The demo as a newcomer meets it: ``dagster dev`` on 127.0.0.1 driven by a headless browser.

``dagster dev`` serves the demo code location from ``workspace.yaml`` on a free port, with a
temporary DAGSTER_HOME holding the project's ``dagster.yaml`` (the local provider at instant speed,
the sensor ticking every second). Debian's chromium, driven by Playwright, opens the asset graph,
stops the sensor from its page, launches the submit job for one day from the Materialize dialog,
and finds the day's batch in flight on the batch asset's page: submitted, not materialized (the
sensor is off, so it stays so however slow the machine). It starts the sensor again, waits until
the results run has succeeded, and finds the batch done on the batch asset's page and the row
counts, the cost in USD and the columns on the results asset's page. Screenshots are saved to
``.artifacts/ui/`` (and ``failure.png`` there when a step fails).

Needs ``/usr/bin/chromium`` (``make browser`` installs it; the test never downloads a browser).
"""

import json
import os
import re
import shutil
import signal
import socket
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

_T = TypeVar("_T")


@dataclass
class DagsterDev:
    url: str
    home: Path
    log: Path
    process: subprocess.Popen[bytes]

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = json.load(response)
        if payload.get("errors"):
            raise AssertionError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium (as root or with sudo)")
    return CHROMIUM


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_PIPELINES_")}
    env.update(
        DAGSTER_HOME=str(home),
        BATCH_PIPELINES_LOCAL_SPEED="instant",
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


def _metadata_row(page: Any, key: str) -> Any:
    """The value cell of metadata entry ``key`` in the asset page's metadata table."""
    return page.get_by_role("row").filter(has=page.get_by_role("cell", name=key, exact=True)).first.get_by_role("cell").last


def _toggle_sensor(page: Any, url: str, *, running: bool) -> None:
    """Turn the demo's sensor on or off from its page, as a user does, and wait until the page says so."""
    page.goto(f"{url}/locations/{LOCATION}/sensors/classify_texts_sensor")
    switch = page.locator("label:has(input[type=checkbox])").first
    checkbox = switch.locator("input[type=checkbox]")
    from playwright.sync_api import expect

    expect(checkbox).to_be_attached()
    if checkbox.is_checked() != running:
        switch.click()
    (expect(checkbox).to_be_checked() if running else expect(checkbox).not_to_be_checked())


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

            # 2. Stop the sensor: the day's batch then stays in flight, as Dagster knows it, until it runs again.
            _toggle_sensor(page, url, running=False)
            shot("02_sensor_stopped")

            # 3. Materialize the submit job's assets for one day from the job's asset graph.
            page.goto(f"{url}/locations/{LOCATION}/jobs/classify_texts_submit")
            page.get_by_role("button", name="Materialize all…").click()
            dialog = page.get_by_role("dialog")
            expect(dialog.get_by_text("Launch runs to materialize 3 assets")).to_be_visible()
            partitions = dialog.get_by_placeholder("ex: 2026-03-02", exact=False)
            partitions.fill(DAY)
            partitions.press("Enter")
            launch = dialog.get_by_role("button", name="Launch 1 run")
            expect(launch).to_be_enabled()
            shot("03_materialize_dialog")
            launch.click()
            expect(page.get_by_text("Launched run")).to_be_visible()
            shot("04_launched")

            # 4. The submit run ended: the batch is in flight. The batch asset is not materialized;
            # its page shows the submission, with the batch id.
            wait_for("the submit run to succeed", lambda: _succeeded_run(dagster_dev, "classify_texts_submit"), timeout=150, dev=dagster_dev)
            assert not _materialized(dagster_dev, "classify_texts_batch", DAY)
            page.goto(f"{url}/assets/classify_texts_batch?partition={DAY}")
            expect(page.get_by_text("Never materialized")).to_be_visible()
            expect(_metadata_row(page, "status")).to_have_text("submitted")
            expect(_metadata_row(page, "batch_ids")).to_contain_text("batch_")
            shot("05_batch_in_flight")

            # 5. The sensor again: it polls the batch, materializes the batch asset and launches the results run.
            _toggle_sensor(page, url, running=True)
            run = wait_for(
                "the sensor's results run to succeed", lambda: _finished_results_run(dagster_dev), timeout=150, dev=dagster_dev
            )
            page.goto(f"{url}/runs/{run['runId']}")
            expect(page.get_by_text("Launched by classify_texts_sensor")).to_be_visible()
            expect(page.get_by_text("Success", exact=True).first).to_be_visible()
            expect(page.get_by_text("Finished execution of run").first).to_be_visible()
            shot("06_results_run")

            # 6. The batch asset's page: materialized, done, with the final figures.
            assert _materialized(dagster_dev, "classify_texts_batch", DAY)
            page.goto(f"{url}/assets/classify_texts_batch?partition={DAY}")
            expect(_metadata_row(page, "status")).to_have_text("completed")
            expect(_metadata_row(page, "progress")).to_have_text(f"{ROWS} of {ROWS} requests done (100%), 0 failed")
            shot("07_batch_done")

            # 7. The results asset's page shows the day's row counts, the cost in USD and the columns.
            page.goto(f"{url}/assets/classify_texts_results?partition={DAY}")
            expect(page.get_by_text(DAY).first).to_be_visible()
            for key, value in (("rows", ROWS), ("succeeded", ROWS), ("failed", 0), ("missing", 0)):
                expect(_metadata_row(page, key), f"metadata {key}").to_have_text(str(value))
            cost = _metadata_row(page, "cost_usd")
            expect(cost).to_have_text(re.compile(r"^0\.\d+$"))
            assert float(cost.inner_text()) > 0
            columns = page.get_by_role("row").filter(has=page.get_by_role("cell", name="output_category", exact=True)).first
            expect(columns.get_by_role("cell").nth(1)).to_have_text("string")
            shot("08_results_asset")
        except BaseException:
            try:
                shot("failure")
            except Exception as exc:  # noqa: BLE001 - the original failure matters more
                print(f"no failure screenshot: {exc}")
            raise
        finally:
            browser.close()
