"""BatchPipelineComponent: a pipeline declared in a project's defs.yaml, loaded as Dagster loads it, run end to end."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster.components.core.package_entry import discover_entry_point_package_objects
from dagster.components.testing import create_defs_folder_sandbox

from batch_pipelines import BatchPipelineComponent, BatchProviderResource
from batch_pipelines_tests.support.driver import KEY_ENV, SPEC, Harness
from batch_pipelines_tests.support.service import LocalService

DAYS = ["2024-01-01", "2024-01-02"]


def component_defs(component: BatchPipelineComponent) -> dg.Definitions:
    return component.build_defs(dg.ComponentTree.for_test().load_context)


def attributes(service: LocalService, storage: Path, **changes: Any) -> dict[str, Any]:
    """defs.yaml attributes: the harness's classification spec, on the local service posing as OpenAI."""
    return {
        "name": "classify",
        "source": "texts",
        "partitions_def": {"type": "daily", "start_date": "2024-01-01"},
        "request": {
            "model": SPEC.model,
            "key_column": SPEC.key_column,
            "output_model": "batch_pipelines_tests.support.driver:Label",
            "messages": SPEC.messages,
            "body": {"temperature": 0},
        },
        "provider": {
            "provider": "openai",
            "base_url": service.base_url,
            "api_key_env": KEY_ENV,
            "storage_dir": str(storage),
            "poll_interval_seconds": 0,
            "max_poll_interval_seconds": 0,
        },
        "group_name": "classification",
        **changes,
    }


def test_a_yaml_pipeline_loads_like_any_component_and_runs_every_row_once(service, instance, tmp_path):
    with create_defs_folder_sandbox() as sandbox:
        # The source is an ordinary asset of the project; the pipeline is YAML.
        (sandbox.defs_folder_path / "texts.py").write_text(
            "from batch_pipelines_tests.support.driver import make_texts\n\ntexts = make_texts(6)\n"
        )
        component_dir = sandbox.defs_folder_path / "classify"
        component_dir.mkdir()
        (component_dir / "defs.yaml").write_text(
            yaml.safe_dump({"type": "batch_pipelines.BatchPipelineComponent", "attributes": attributes(service, tmp_path / "storage")})
        )
        with sandbox.build_component_tree() as tree:
            component = tree.load_component(component_dir)
            defs = tree.build_defs()

            assert isinstance(component, BatchPipelineComponent)
            keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
            assert keys == {"texts", "classify_requests", "classify_batch", "classify_results"}
            assert defs.resolve_sensor_def("classify_sensor") is not None
            assert defs.resolve_job_def("classify_cancel") is not None
            results = defs.resolve_assets_def("classify_results")
            assert results.partitions_def == dg.DailyPartitionsDefinition(start_date="2024-01-01")
            assert results.group_names_by_key[results.key] == "classification"
            resource = defs.resources["batch_provider"]
            assert isinstance(resource, BatchProviderResource) and resource.provider == "openai"
            assert service.api_key not in repr(resource)  # the key is named (EnvVar), never held in config

            spec = component.request.to_spec()
            assert spec.output_model.__name__ == "Label" and spec.body == {"temperature": 0}
            pipeline = component.build_pipeline()
            harness = Harness(instance, pipeline, defs.resolve_assets_def("texts"), resource)
            harness.submit(DAYS)
            harness.drive(DAYS)

    for day in DAYS:
        frame = harness.results(day)
        assert frame["text_id"].tolist() == [f"{day}-{i:03d}" for i in range(6)]
        assert set(frame["outcome"]) == {"succeeded"}
        assert frame["output_category"].notna().all()


def test_the_component_is_registered_for_dg():
    assert any(key.name == "BatchPipelineComponent" and key.namespace == "batch_pipelines" for key in discover_entry_point_package_objects())


def test_a_key_in_the_yaml_is_refused_and_bad_import_paths_are_named(service, tmp_path):
    with_key = attributes(service, tmp_path, provider={"provider": "openai", "api_key": "sk-written-down"})
    with pytest.raises(ValueError, match="api_key_env"):
        component_defs(BatchPipelineComponent.resolve_from_yaml(yaml.safe_dump(with_key)))

    wrong_model = attributes(service, tmp_path)
    wrong_model["request"]["output_model"] = "batch_pipelines_tests.support.driver:NoSuchModel"
    with pytest.raises(ValueError, match=r"request\.output_model: cannot import 'batch_pipelines_tests\.support\.driver:NoSuchModel'"):
        component_defs(BatchPipelineComponent.resolve_from_yaml(yaml.safe_dump(wrong_model)))


def test_the_request_templates_are_not_taken_for_component_templates():
    component = BatchPipelineComponent.resolve_from_yaml(
        textwrap.dedent(
            """
            name: summarize
            source: raw/articles
            request:
              model: kimi-k2.5
              input_template: "Summarize: {body}"
            """
        )
    )
    spec = component.request.to_spec()
    assert spec.input_template == "Summarize: {body}" and spec.columns == ["body"]
    pipeline = component.build_pipeline()
    assert pipeline.requests_asset.keys_by_input_name["source"] == dg.AssetKey(["raw", "articles"])
    assert component.provider is None and not component_defs(component).resources  # the resource is bound elsewhere
