"""Your own model behind batch semantics: the local provider forwarding every request to a
real-time OpenAI-compatible server, driven through Dagster like any provider."""

from __future__ import annotations

import pytest

from batch_pipelines import BatchProviderResource
from batch_pipelines_tests.support.driver import SPEC, Harness, build, make_texts
from batch_pipelines_tests.support.realtime import RealtimeServer, upstream_label

UPSTREAM_KEY_ENV = "BATCH_PIPELINES_TEST_UPSTREAM_KEY"
DAY = "2024-01-01"


@pytest.fixture
def upstream():
    server = RealtimeServer(api_key="sk-upstream-test")
    yield server
    server.stop()


def test_a_pipeline_on_the_local_provider_gets_the_answers_of_the_forwarded_server(instance, upstream, tmp_path, monkeypatch):
    monkeypatch.setenv(UPSTREAM_KEY_ENV, upstream.api_key)
    resource = BatchProviderResource(
        local_data_dir=str(tmp_path / "local"),
        storage_dir=str(tmp_path / "storage"),
        poll_interval_seconds=0,
        max_poll_interval_seconds=0,
        forward_url=upstream.base_url,
        forward_model="my-llama",
        forward_concurrency=3,
        forward_api_key_env=UPSTREAM_KEY_ENV,
    )
    assert upstream.api_key not in repr(resource)
    texts = make_texts(6)
    harness = Harness(instance, build(source=texts), texts, resource)
    harness.submit([DAY])
    harness.drive([DAY])

    frame = harness.results(DAY)
    assert frame["text_id"].tolist() == [f"{DAY}-{i:03d}" for i in range(6)]
    assert set(frame["outcome"]) == {"succeeded"}
    # Every answer is the server's own (the built-in responder picks categories by hash and
    # never computes this confidence), to the request the row's text makes.
    prompts = [SPEC.messages[-1]["content"].format(text=text) for text in frame["text"]]
    assert frame["output_category"].tolist() == [upstream_label(p)["category"] for p in prompts]
    assert frame["output_confidence"].tolist() == [upstream_label(p)["confidence"] for p in prompts]
    # The server was asked once per row, with the model override, and the run paid for its tokens.
    assert sorted(body["messages"][-1]["content"] for body in upstream.received) == sorted(prompts)
    assert {body["model"] for body in upstream.received} == {"my-llama"}
    assert upstream.api_key not in (tmp_path / "local" / "state.sqlite3").read_bytes().decode("latin-1")


def test_forwarding_settings_are_checked_when_the_resource_is_made():
    with pytest.raises(ValueError, match="local provider only"):
        BatchProviderResource(provider="openai", forward_url="http://127.0.0.1:8000/v1")
    with pytest.raises(ValueError, match="forward_model: no effect without forward_url"):
        BatchProviderResource(forward_model="my-llama")
    with pytest.raises(ValueError, match="must name an environment variable") as refused:
        BatchProviderResource(forward_url="http://127.0.0.1:8000/v1", forward_api_key_env="sk-live-0123456789abcdef")
    assert "sk-live-0123456789abcdef" not in str(refused.value)
