"""BatchPipelineComponent: a pipeline declared in a project's defs.yaml, loaded as Dagster loads it, run end to end."""

from __future__ import annotations

import textwrap
import traceback
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster.components.component_scaffolding import scaffold_object
from dagster.components.core.package_entry import discover_entry_point_package_objects
from dagster.components.testing import create_defs_folder_sandbox

from batch_pipelines import BatchPipelineComponent, BatchProviderResource
from batch_pipelines_tests.support.driver import KEY_ENV, SPEC, Harness
from batch_pipelines_tests.support.service import LocalService
from batch_pipelines_tests.support.waiting import wait_until

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
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="api_key_env") as refused:
        component_defs(BatchPipelineComponent.resolve_from_yaml(yaml.safe_dump(with_key)))
    assert "sk-written-down" not in str(refused.value)

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
    [spec] = pipeline.requests_asset.specs
    assert [d.asset_key for d in spec.deps] == [dg.AssetKey(["raw", "articles"])]
    # No provider block: the embedded local provider, bound under the pipeline's resource key.
    assert not component.provider.model_fields_set
    assert component_defs(component).resources["batch_provider"].provider == "local"


def load_project(files: dict[str, str]) -> dg.Definitions:
    """A dg project's defs folder with ``files`` (path -> text), loaded as ``dg check defs`` loads it."""
    with create_defs_folder_sandbox() as sandbox:
        for path, text in files.items():
            (sandbox.defs_folder_path / path).parent.mkdir(parents=True, exist_ok=True)
            (sandbox.defs_folder_path / path).write_text(text)
        with sandbox.build_component_tree() as tree:
            defs = tree.build_defs()
            dg.Definitions.validate_loadable(defs)
            return defs


def pipeline_yaml(name: str, **changes: Any) -> str:
    request = {"model": "gpt-4o-mini", "key_column": "text_id", "messages": [{"role": "user", "content": "{text}"}]}
    return yaml.safe_dump(
        {"type": "batch_pipelines.BatchPipelineComponent", "attributes": {"name": name, "source": "texts", "request": request, **changes}}
    )


TEXTS_PY = "from batch_pipelines_tests.support.driver import make_texts\n\ntexts = make_texts(3)\n"


def test_the_provider_block_is_optional_the_local_provider_runs_every_pipeline_without_it():
    # Two pipelines, neither with a provider block: one code location, both on the local provider.
    defs = load_project({"texts.py": TEXTS_PY, "one/defs.yaml": pipeline_yaml("one"), "two/defs.yaml": pipeline_yaml("two")})
    assert defs.resolve_job_def("one_cancel") is not None and defs.resolve_job_def("two_cancel") is not None
    resource = defs.resources["batch_provider"]
    assert isinstance(resource, BatchProviderResource) and resource.provider == "local"


def test_a_typo_is_named_in_the_error_and_in_the_schema_dg_checks():
    with pytest.raises(Exception) as misspelt:
        load_project({"texts.py": TEXTS_PY, "one/defs.yaml": pipeline_yaml("one").replace("key_column:", "key_colum:")})
    message = "".join(traceback.format_exception(misspelt.value))
    assert "attributes.request.key_colum" in message and "defs.yaml:" in message
    assert "not valid under any of the given schemas" not in message and "attributes.request.str" not in message

    with pytest.raises(Exception) as unknown:
        load_project({"texts.py": TEXTS_PY, "one/defs.yaml": pipeline_yaml("one", provider={"provider": "openai", "input_price": 0.6})})
    assert "attributes.provider.input_price" in "".join(traceback.format_exception(unknown.value))

    # What `dg check yaml` validates against: the request and provider blocks are objects that name
    # their fields (no "or a template string" alternative, which makes any typo a bare anyOf failure),
    # provider names are the known ones, and provider attributes are typed.
    schema = BatchPipelineComponent.get_model_cls().model_json_schema()
    assert schema["properties"]["request"] == {"$ref": "#/$defs/RequestModel"}
    assert schema["properties"]["provider"]["$ref"] == "#/$defs/ProviderModel"
    request, provider = schema["$defs"]["RequestModel"], schema["$defs"]["ProviderModel"]
    assert request["additionalProperties"] is False and "key_column" in request["properties"]
    assert provider["additionalProperties"] is False and "api_key" not in provider["properties"]
    assert set(provider["properties"]["provider"]["enum"]) >= {"local", "moonshot", "openai", "anthropic", "custom"}
    assert provider["properties"]["poll_interval_seconds"]["type"] == "number"
    assert provider["properties"]["forward_url"]["anyOf"] == [{"type": "string"}, {"type": "null"}]


def test_a_key_in_api_key_env_is_refused_without_being_shown():
    pasted = "sk-proj-Zq81mXsecretkeyvalue"
    with pytest.raises(Exception) as refused:
        load_project({"texts.py": TEXTS_PY, "one/defs.yaml": pipeline_yaml("one", provider={"provider": "openai", "api_key_env": pasted})})
    message = "".join(traceback.format_exception(refused.value))
    assert "provider.api_key_env must name an environment variable" in message
    assert pasted not in message and "sk-proj" not in message
    # A variable's name is taken, and becomes the resource's EnvVar.
    defs = load_project({"texts.py": TEXTS_PY, "one/defs.yaml": pipeline_yaml("one", provider={"provider": "openai", "api_key_env": "OPENAI_API_KEY"})})
    assert defs.resources["batch_provider"].api_key == "OPENAI_API_KEY"


def test_the_scaffold_writes_a_pipeline_that_loads_and_runs_on_the_local_provider(instance, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with create_defs_folder_sandbox() as sandbox:
        target = sandbox.defs_folder_path / "review-sentiment"
        # What `dg scaffold defs batch_pipelines.BatchPipelineComponent review-sentiment` runs in the project's environment.
        scaffold_object(target, "batch_pipelines.BatchPipelineComponent", None, "yaml", sandbox.project_root)
        written = (target / "pipeline" / "defs.yaml").read_text()
        assert "attributes: {}" not in written and "name: review_sentiment" in written
        with sandbox.build_component_tree() as tree:
            defs = tree.build_defs()
            dg.Definitions.validate_loadable(defs)
            [component] = tree.get_all_components(of_type=BatchPipelineComponent)
            keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
            assert keys == {"review_sentiment_texts", "review_sentiment_requests", "review_sentiment_batch", "review_sentiment_results"}
            resource = defs.resources["batch_provider"]
            assert resource.provider == "local"
            # The same local provider, polled without the default 30 s between polls.
            fast = resource.model_copy(update={"poll_interval_seconds": 0, "max_poll_interval_seconds": 0})
            harness = Harness(instance, component.build_pipeline(), defs.resolve_assets_def("review_sentiment_texts"), fast)
            harness.submit([None])  # the scaffold's source is unpartitioned

            def results_materialized() -> bool:
                if instance.get_latest_materialization_event(harness.pipeline.results_asset.key) is not None:
                    return True
                harness.tick(launch=True)
                return False

            wait_until(results_materialized)
            frame = harness.results(None)
    assert frame["text_id"].tolist() == ["t1", "t2", "t3"] and set(frame["outcome"]) == {"succeeded"}


def test_templates_in_the_provider_block_are_rendered(monkeypatch):
    monkeypatch.setenv("BATCH_PIPELINES_TEST_GATEWAY", "http://127.0.0.1:9/v1")
    component = BatchPipelineComponent.resolve_from_yaml(
        textwrap.dedent(
            """
            name: summarize
            source: articles
            request: {model: my-model, input_template: "Summarize: {body}"}
            provider: {provider: custom, base_url: "{{ env.BATCH_PIPELINES_TEST_GATEWAY }}", api_key_env: GATEWAY_KEY}
            """
        )
    )
    resource = component_defs(component).resources["batch_provider"]
    assert resource.provider == "custom" and resource.base_url == "http://127.0.0.1:9/v1" and resource.api_key == "GATEWAY_KEY"
