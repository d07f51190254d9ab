"""The README's local-service example runs as written against `batch-pipelines serve`.

The README is the user's first contact: its example must keep working. The test starts the
service the way `make serve` does (posing as Moonshot, realistic pace) on a free port, and runs
the README's Python block unchanged except for the port.
"""

import os
import re
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from batch_pipelines_tests.support.local_http import free_port
from batch_pipelines_tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
MAKE_SERVE_PORT = "8787"


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Try the local service", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _wait_until_serving(url: str, proc: subprocess.Popen) -> None:
    def answers() -> bool:
        assert proc.poll() is None, f"batch-pipelines serve exited with {proc.returncode}"
        try:
            httpx.get(url, timeout=1)  # any answer (401 without a key) means it is up
        except httpx.TransportError:
            return False
        return True

    wait_until(answers, interval=0.05)


def test_readme_example_runs_against_the_local_service(tmp_path: Path) -> None:
    example = _readme_example()
    assert f"127.0.0.1:{MAKE_SERVE_PORT}/v1" in example, "the README example should target `make serve`'s URL"
    port = free_port()
    script = tmp_path / "example.py"
    script.write_text(example.replace(f":{MAKE_SERVE_PORT}/", f":{port}/"))
    makefile = (ROOT / "Makefile").read_text()
    assert "BATCH_PIPELINES_LOCAL_API_KEY=local-dev-key" in makefile and "--profile moonshot --speed realistic" in makefile
    assert "--api-key local-dev-key" not in makefile  # the key stays off the command line

    serve = [
        sys.executable, "-m", "batch_pipelines.cli", "serve", "--port", str(port),
        "--data-dir", str(tmp_path / "data"), "--profile", "moonshot", "--speed", "realistic",
    ]  # fmt: skip
    env = {**os.environ, "BATCH_PIPELINES_LOCAL_API_KEY": "local-dev-key"}
    proc = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        _wait_until_serving(f"http://127.0.0.1:{port}/v1/batches", proc)
        run = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={**os.environ, "NO_PROXY": "127.0.0.1"},
        )  # fmt: skip
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    statuses = [line.split()[0] for line in lines if not line.startswith("text_")]
    assert statuses[-1] == "completed" and len(statuses) > 1, f"the example should show progress: {statuses}"
    answers = [line for line in lines if line.startswith("text_")]
    assert sorted(a.split()[0] for a in answers) == ["text_0", "text_1", "text_2"]


def _project_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Use it in your project", 1)[1].split("\n## ", 1)[0]


def test_readme_project_example_builds_definitions(tmp_path: Path, monkeypatch) -> None:
    import dagster as dg

    example = re.search(r"```python\n(.*?)```", _project_section(), re.S).group(1)
    script = tmp_path / "my_definitions.py"
    script.write_text(example)
    defs = runpy.run_path(str(script))["defs"]

    dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert keys == {"reviews", "review_sentiment_requests", "review_sentiment_batch", "review_sentiment_results"}
    assert defs.resolve_sensor_def("review_sentiment_sensor").name == "review_sentiment_sensor"
    resource = defs.resources["batch_provider"]
    monkeypatch.setenv("MOONSHOT_API_KEY", "sk-readme-secret")
    assert "sk-readme-secret" not in repr(resource) and resource.provider == "moonshot"


def test_readme_component_example_resolves_to_the_same_pipeline(tmp_path: Path, monkeypatch) -> None:
    import yaml

    from batch_pipelines import BatchPipelineComponent

    block = re.search(r"```yaml\n(.*?)```", _project_section(), re.S).group(1)
    declared = yaml.safe_load(block)
    assert declared["type"] == "batch_pipelines.BatchPipelineComponent"
    # my_project.models:Sentiment, as the Python example defines it.
    package = tmp_path / "my_project"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        "from typing import Literal\n\nfrom pydantic import BaseModel\n\n\n"
        "class Sentiment(BaseModel):\n    label: Literal['positive', 'neutral', 'negative']\n    reason: str\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    component = BatchPipelineComponent.resolve_from_yaml(yaml.safe_dump(declared["attributes"]))
    pipeline = component.build_pipeline()

    assert [a.key.to_user_string() for a in pipeline.assets] == ["review_sentiment_requests", "review_sentiment_batch", "review_sentiment_results"]
    assert pipeline.requests_asset.partitions_def.start.strftime("%Y-%m-%d") == "2026-03-01"
    assert component.request.to_spec().output_model.__name__ == "Sentiment"
