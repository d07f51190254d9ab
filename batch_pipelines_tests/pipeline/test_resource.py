"""BatchProviderResource catches mistakes when it is made, or before anything is submitted."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from batch_pipelines import BatchProviderResource
from batch_pipelines.requests import RequestValidationError, build_request_files
from batch_pipelines_tests.support.driver import SPEC, Harness, build, make_texts

DAY = "2024-01-01"


def test_a_misspelt_setting_is_refused_by_name():
    with pytest.raises(ValueError, match="input_price") as refused:
        BatchProviderResource(input_price=0.6)
    assert "Extra inputs are not permitted" in str(refused.value)
    # The right name is taken, and the cost it configures is there.
    assert BatchProviderResource(input_price_per_million=0.6).prices("gpt-4o-mini").input_per_million == 0.6


def test_a_model_moonshot_does_not_take_is_refused_before_anything_is_submitted(instance, tmp_path):
    assert SPEC.model == "gpt-4o-mini"
    resource = BatchProviderResource(
        local_profile="moonshot", local_data_dir=str(tmp_path / "local"), storage_dir=str(tmp_path / "storage")
    )
    texts = make_texts(3)
    harness = Harness(instance, build(source=texts), texts, resource)
    result = harness.materialize([texts, harness.pipeline.requests_asset, harness.pipeline.batch_asset], DAY, raise_on_error=False)

    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "model_not_supported" in message and "'kimi-k2.5'" in message and "'gpt-4o-mini'" in message
    assert failure.step_key == "classify_requests"  # refused while the request files are built
    with resource.get_provider() as provider:
        assert list(provider.list_batches()) == []

    # The rule is the profile's: kimi-k2.5 passes it, any other model is refused whatever the policy.
    frame = pd.DataFrame({"text_id": ["a"], "text": ["hello"]})
    kimi = SPEC.model_copy(update={"model": "kimi-k2.5"})
    assert build_request_files(frame, kimi, tmp_path / "kimi", profile=resource.profile).requests == 1
    with pytest.raises(RequestValidationError, match="model_not_supported"):
        build_request_files(frame, SPEC, tmp_path / "other", profile=resource.profile, policy="quarantine")


def test_a_key_given_for_the_name_of_its_variable_is_refused_without_being_shown():
    with pytest.raises(ValueError, match="must name an environment variable") as refused:
        BatchProviderResource(forward_url="http://127.0.0.1:1/v1", forward_api_key_env="sk-proj-Abc123secretvalue")
    assert "sk-proj-Abc123secretvalue" not in str(refused.value) and "sk-proj" not in repr(refused.value)
    assert isinstance(BatchProviderResource(api_key=dg.EnvVar("MOONSHOT_API_KEY"), provider="moonshot"), BatchProviderResource)


def test_storage_options_refuse_credentials():
    with pytest.raises(ValueError, match=r"\['client_kwargs.aws_secret_access_key', 'key'\]: credentials do not belong"):
        BatchProviderResource(storage_options={"key": "AKIA...", "client_kwargs": {"aws_secret_access_key": "..."}})
    assert BatchProviderResource(storage_options={"endpoint_url": "http://127.0.0.1:9000"}).storage_options
