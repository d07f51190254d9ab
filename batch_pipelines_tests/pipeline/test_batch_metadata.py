"""What the batch asset shows of its batches: the output expiry policy asked for, model and usage."""

from __future__ import annotations

import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from batch_pipelines.pipeline import BatchPipelineComponent, BatchProviderResource
from batch_pipelines_tests.pipeline.test_component import attributes
from batch_pipelines_tests.support.service import service_batches

DAY = "2024-01-01"
TWO_HOURS = 7200


def test_the_batch_asset_shows_model_usage_and_the_output_expiry_it_asked_for(harness, service):
    h = harness(rows=6, blocking=True, resource={"output_expires_after_seconds": TWO_HOURS})

    assert h.materialize(h.assets, DAY).success

    metadata = h.latest_metadata(h.pipeline.batch_asset, DAY)  # the batches ended
    [batch] = service_batches(service)
    assert h.submission(DAY)["output_expires_after_seconds"] == TWO_HOURS
    assert metadata["models"] == {batch["id"]: "gpt-4o-mini"}
    usage = metadata["batch_usage"][batch["id"]]
    assert usage["input_tokens"] == batch["usage"]["input_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    # The service was asked for it: the output file expires two hours after it was written.
    output = service.engine.store.read_one("SELECT created_at, expires_at FROM files WHERE id = ?", (batch["output_file_id"],))
    assert output["expires_at"] == output["created_at"] + TWO_HOURS


def test_without_a_policy_nothing_expires_and_nothing_is_shown(harness, service):
    h = harness(rows=3, blocking=True)
    assert h.materialize(h.assets, DAY).success
    assert "output_expires_after_seconds" not in h.submission(DAY)
    [batch] = service_batches(service)
    assert service.engine.store.read_one("SELECT expires_at FROM files WHERE id = ?", (batch["output_file_id"],))["expires_at"] is None


@pytest.mark.parametrize("seconds", [3599, 2_592_001])
def test_the_resource_refuses_a_policy_out_of_range(seconds):
    with pytest.raises(Exception, match="output_expires_after_seconds"):
        BatchProviderResource(provider="openai", output_expires_after_seconds=seconds)


def test_the_component_passes_the_policy_to_its_resource(service, tmp_path):
    with create_defs_folder_sandbox() as sandbox:
        (sandbox.defs_folder_path / "texts.py").write_text(
            "from batch_pipelines_tests.support.driver import make_texts\n\ntexts = make_texts(2)\n"
        )
        component_dir = sandbox.defs_folder_path / "classify"
        component_dir.mkdir()
        settings = attributes(service, tmp_path / "storage")
        settings["provider"]["output_expires_after_seconds"] = TWO_HOURS
        (component_dir / "defs.yaml").write_text(yaml.safe_dump({"type": "batch_pipelines.BatchPipelineComponent", "attributes": settings}))
        with sandbox.build_component_tree() as tree:
            assert isinstance(tree.load_component(component_dir), BatchPipelineComponent)
            resource = tree.build_defs().resources["batch_provider"]
    assert isinstance(resource, BatchProviderResource) and resource.output_expires_after_seconds == TWO_HOURS
