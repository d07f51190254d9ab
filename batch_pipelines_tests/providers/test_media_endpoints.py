"""OpenAI's image and video endpoints, batched: the client sends them, the service runs them."""

from __future__ import annotations

import pytest

from batch_pipelines.profiles import IMAGES_EDITS, IMAGES_GENERATIONS, VIDEOS
from batch_pipelines.providers import BatchStatus, OpenAICompatibleProvider
from batch_pipelines_tests.support.clients import FAST_RETRY
from batch_pipelines_tests.support.request_files import read_jsonl, write_lines
from batch_pipelines_tests.support.waiting import wait_terminal

BODIES = {
    IMAGES_GENERATIONS: {"model": "gpt-image-1", "prompt": "A lighthouse at dusk", "n": 2},
    IMAGES_EDITS: {"model": "gpt-image-1", "prompt": "Add a boat", "images": [{"image_url": "https://example.com/a.png"}]},
    VIDEOS: {"model": "sora-2", "prompt": "Waves on a beach", "seconds": "4"},
}


def _client(svc) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(svc.engine.profile, base_url=svc.base_url, api_key=svc.api_key, retry=FAST_RETRY)


@pytest.mark.parametrize("endpoint", list(BODIES))
def test_media_endpoints_are_batched_posing_as_openai(local_service, tmp_path, endpoint):
    svc = local_service(profile="openai")
    lines = [{"custom_id": f"m-{i}", "method": "POST", "url": endpoint, "body": BODIES[endpoint]} for i in range(3)]
    with _client(svc) as provider:
        batch = provider.submit(write_lines(tmp_path / "media.jsonl", lines), endpoint=endpoint)
        assert batch.endpoint == endpoint
        done = wait_terminal(provider, batch.id)
        assert done.status == BatchStatus.COMPLETED, done.errors
        assert (done.request_counts.completed, done.request_counts.failed) == (3, 0)
        files = provider.download_results(done, tmp_path)
    answers = read_jsonl(files.output_path)
    assert sorted(a["custom_id"] for a in answers) == ["m-0", "m-1", "m-2"]
    for answer in answers:
        assert answer["response"]["status_code"] == 200
        body = answer["response"]["body"]
        if endpoint == VIDEOS:
            assert body["object"] == "video" and body["status"] == "completed" and body["model"] == "sora-2"
        else:
            assert len(body["data"]) == (2 if endpoint == IMAGES_GENERATIONS else 1) and body["data"][0]["b64_json"]
            assert body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + body["usage"]["output_tokens"]


def test_media_endpoints_stay_refused_where_the_profile_has_none(local_service, tmp_path):
    svc = local_service(profile="moonshot")
    lines = [{"custom_id": "m-0", "method": "POST", "url": VIDEOS, "body": BODIES[VIDEOS]}]
    with _client(svc) as provider:
        uploaded = provider.upload_file(write_lines(tmp_path / "media.jsonl", lines))
        with pytest.raises(ValueError, match="moonshot batches accept endpoints /v1/chat/completions, not '/v1/videos'"):
            provider.create_batch(uploaded.id, endpoint=VIDEOS)
    answer = svc.engine.list_batches()
    assert answer["data"] == []  # nothing was created
