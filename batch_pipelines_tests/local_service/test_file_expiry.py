"""Files that expire: an upload's ``expires_after`` and a batch's ``output_expires_after``.

The service's ``time_scale`` speeds expiry up as it speeds up completion windows: at 3600 an
hour's policy lasts a second, and tests wait for the files to go. The official SDK sending both
policies is in ``test_sdk_workflow.py``; here the bounds, the client and the profiles without them.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from batch_pipelines.providers import BatchStatus, NotFoundError, OpenAICompatibleProvider
from batch_pipelines_tests.support.clients import FAST_RETRY, sdk
from batch_pipelines_tests.support.request_files import CHAT, write_requests
from batch_pipelines_tests.support.waiting import wait_terminal, wait_until

HOUR, MONTH = 3600, 2_592_000
SCALE = 3600  # an hour lasts a second


def _client(svc) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(svc.engine.profile, base_url=svc.base_url, api_key=svc.api_key, retry=FAST_RETRY)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"anchor": "created_at", "seconds": 3599}, "seconds must be an integer from 3600 (1 hour) to 2592000 (30 days), not 3599"),
        ({"anchor": "created_at", "seconds": 2_592_001}, "not 2592001"),
        ({"anchor": "last_active_at", "seconds": HOUR}, "anchor must be 'created_at', not 'last_active_at'"),
        ({"anchor": "created_at", "seconds": "soon"}, "not 'soon'"),
        ({"seconds": HOUR}, "anchor must be 'created_at', not None"),
    ],
)
def test_expiry_policies_out_of_range_are_400s_naming_the_parameter(local_service, tmp_path, policy, message):
    svc = local_service(profile="openai")
    headers = {"Authorization": f"Bearer {svc.api_key}"}
    form = {"purpose": "batch", **{f"expires_after[{k}]": str(v) for k, v in policy.items()}}
    path = write_requests(tmp_path / "requests.jsonl", 1)
    answer = httpx.post(svc.base_url + "/files", headers=headers, data=form, files={"file": ("r.jsonl", path.read_bytes())})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "expires_after"
    assert message in answer.json()["error"]["message"]
    assert svc.engine.list_files()["data"] == []

    uploaded = httpx.post(svc.base_url + "/files", headers=headers, data={"purpose": "batch"}, files={"file": ("r.jsonl", path.read_bytes())})
    body = {"input_file_id": uploaded.json()["id"], "endpoint": CHAT, "completion_window": "24h", "output_expires_after": policy}
    answer = httpx.post(svc.base_url + "/batches", headers=headers, json=body)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "output_expires_after"
    assert message in answer.json()["error"]["message"]
    assert svc.engine.list_batches()["data"] == []


def test_the_client_sends_expiry_policies_and_refuses_bad_ones_before_sending(local_service, tmp_path):
    svc = local_service(profile="openai", time_scale=SCALE)
    with _client(svc) as provider:
        path = write_requests(tmp_path / "requests.jsonl", 3)
        uploaded = provider.upload_file(path, expires_after_seconds=MONTH)
        assert uploaded.expires_at == uploaded.created_at + MONTH // SCALE
        batch = provider.submit(path, endpoint=CHAT, output_expires_after_seconds=HOUR)
        done = wait_terminal(provider, batch.id)
        assert done.status == BatchStatus.COMPLETED
        wait_until(lambda: done.output_file_id not in {f["id"] for f in svc.engine.list_files()["data"]})
        with pytest.raises(NotFoundError):
            provider.download_file(done.output_file_id, tmp_path / "late.jsonl")
        for bad in (HOUR - 1, MONTH + 1):
            with pytest.raises(ValueError, match="output_expires_after.seconds must be an integer from 3600"):
                provider.create_batch(uploaded.id, endpoint=CHAT, output_expires_after_seconds=bad)
            with pytest.raises(ValueError, match="expires_after.seconds must be an integer from 3600"):
                provider.upload_file(path, expires_after_seconds=bad)
    assert len(svc.engine.list_batches()["data"]) == 1  # nothing refused was sent


def test_a_profile_without_file_expiry_refuses_the_policies(local_service, tmp_path):
    svc = local_service(profile="moonshot")
    path = write_requests(tmp_path / "requests.jsonl", 1, model="kimi-k2.5")
    with _client(svc) as provider:
        with pytest.raises(ValueError, match="moonshot does not take output_expires_after"):
            provider.submit(path, endpoint=CHAT, output_expires_after_seconds=HOUR)
    client = sdk(svc)
    with pytest.raises(openai.BadRequestError, match="moonshot does not take expires_after"):
        client.files.create(file=path, purpose="batch", expires_after={"anchor": "created_at", "seconds": HOUR})
    uploaded = client.files.create(file=path, purpose="batch")
    with pytest.raises(openai.BadRequestError, match="moonshot does not take output_expires_after"):
        client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h",
                              output_expires_after={"anchor": "created_at", "seconds": HOUR})
