"""The official openai SDK runs the Moonshot guide's workflow against the local service over HTTP."""

from __future__ import annotations

import json

import openai
import pytest
from openai.types import Batch, FileDeleted, FileObject

from batch_pipelines_tests.support.clients import sdk
from batch_pipelines_tests.support.request_files import CHAT, chat_line, write_lines, write_requests
from batch_pipelines_tests.support.waiting import wait_for_batch, wait_until


TEXTS = [
    "Hamlet is one of Shakespeare's most famous tragedies",
    "Scientists discover new potentially habitable planet",
    "2024 Artificial Intelligence Development Report",
    "How to make a delicious braised pork dish",
    "Latest iPhone launch event details",
]


@pytest.mark.parametrize("profile", ["moonshot", "openai"])
def test_guide_workflow(local_service, tmp_path, profile):
    svc = local_service(profile=profile)
    client = sdk(svc)
    model = "kimi-k2.5" if profile == "moonshot" else "gpt-4o-mini"
    requests = [
        {
            "custom_id": f"text_{i}",
            "method": "POST",
            "url": CHAT,
            "body": {
                "model": model,
                "messages": [
                    {"role": "system", "content": "You are a text classification expert."},
                    {"role": "user", "content": f"Please classify the following text: {text}"},
                ],
            },
        }
        for i, text in enumerate(TEXTS)
    ]
    path = tmp_path / "classification_requests.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in requests), encoding="utf-8")

    file_object = client.files.create(file=path, purpose="batch")
    assert isinstance(file_object, FileObject)
    assert file_object.purpose == "batch" and file_object.bytes == path.stat().st_size
    assert file_object.filename == "classification_requests.jsonl"

    batch = client.batches.create(input_file_id=file_object.id, endpoint=CHAT, completion_window="24h")
    assert isinstance(batch, Batch) and batch.status == "validating"
    assert batch.created_at and batch.expires_at == batch.created_at + 24 * 3600

    def completed() -> Batch | None:
        current = client.batches.retrieve(batch.id)
        assert current.status not in ("failed", "expired", "cancelled"), current
        return current if current.status == "completed" else None

    batch = wait_until(completed, interval=0.05)

    assert batch.request_counts.total == 5 and batch.request_counts.completed == 5 and batch.request_counts.failed == 0
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.error_file_id is None
    output = client.files.content(batch.output_file_id)
    seen = {}
    for line in output.text.strip().split("\n"):
        data = json.loads(line)
        body = data["response"]["body"]
        assert data["response"]["status_code"] == 200 and data["error"] is None
        seen[data["custom_id"]] = body["choices"][0]["message"]["content"]
        assert body["object"] == "chat.completion" and body["model"] == model
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert set(seen) == {f"text_{i}" for i in range(5)}
    assert "Hamlet" in seen["text_0"]
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"


def test_output_order_differs_from_input_order(local_service, tmp_path):
    svc = local_service()
    client = sdk(svc)
    uploaded = client.files.create(file=write_lines(tmp_path / "in.jsonl", [chat_line(i) for i in range(20)]), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    batch = wait_for_batch(svc.engine, batch.id)
    order = [json.loads(line)["custom_id"] for line in client.files.content(batch["output_file_id"]).text.splitlines()]
    assert sorted(order) == sorted(f"text_{i}" for i in range(20))
    assert order != [f"text_{i}" for i in range(20)]


def test_list_batches_pages_and_auto_paging(local_service, tmp_path):
    svc = local_service()
    client = sdk(svc)
    uploaded = client.files.create(file=write_lines(tmp_path / "in.jsonl", [chat_line(0)]), purpose="batch")
    created = [client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h").id for _ in range(7)]
    newest_first = created[::-1]

    page = client.batches.list(limit=3)
    assert [b.id for b in page.data] == newest_first[:3]
    assert page.has_more is True and page.first_id == newest_first[0] and page.last_id == newest_first[2]
    second = client.batches.list(limit=3, after=page.last_id)
    assert [b.id for b in second.data] == newest_first[3:6]
    last = client.batches.list(limit=3, after=second.last_id)
    assert [b.id for b in last.data] == newest_first[6:] and last.has_more is False

    assert [b.id for b in client.batches.list(limit=2)] == newest_first  # the SDK follows every page
    with pytest.raises(openai.BadRequestError):
        client.batches.list(limit=101)


def test_cancel_through_the_sdk(local_service, tmp_path):
    svc = local_service(profile="moonshot")
    client = sdk(svc)
    uploaded = client.files.create(file=write_lines(tmp_path / "in.jsonl", [chat_line(i) for i in range(40)]), purpose="batch")
    slow = json.dumps({"row_delay": 0.05})
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h", metadata={"local_faults": slow, "job": "x"}
    )
    wait_for_batch(svc.engine, batch.id, ["in_progress"])
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    assert cancelling.metadata == {"local_faults": slow, "job": "x"}
    final = wait_for_batch(svc.engine, batch.id)
    assert final["status"] == "cancelled" and final["cancelled_at"]
    counts = final["request_counts"]
    assert counts["total"] == 40 and 0 < counts["completed"] < 40 and counts["completed"] + counts["failed"] == 40
    errors = [json.loads(x) for x in client.files.content(final["error_file_id"]).text.splitlines()]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"} and len(errors) == counts["failed"]
    done = client.files.content(final["output_file_id"]).text.splitlines()
    assert len(done) == counts["completed"]
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.cancel(batch.id)
    assert info.value.status_code == 400 and "cancelled" in info.value.message


def test_files_list_retrieve_delete(local_service, tmp_path):
    svc = local_service()
    client = sdk(svc)
    ids = [client.files.create(file=write_lines(tmp_path / f"f{i}.jsonl", [chat_line(i)]), purpose="batch").id for i in range(3)]
    listed = client.files.list()
    assert [f.id for f in listed.data] == ids[::-1]
    assert [f.id for f in client.files.list(purpose="batch", limit=1)] == ids[::-1]  # auto-paging with after
    assert client.files.list(purpose="batch_output").data == []
    # order: oldest first on request, pages included; a bogus order is a 400 naming the parameter.
    assert [f.id for f in client.files.list(order="asc")] == ids
    assert [f.id for f in client.files.list(order="asc", limit=1)] == ids
    with pytest.raises(openai.BadRequestError, match="order"):
        client.files.list(order="bogus")  # type: ignore[arg-type]
    assert client.files.retrieve(ids[0]).filename == "f0.jsonl"
    deleted = client.files.delete(ids[0])
    assert isinstance(deleted, FileDeleted) and deleted.deleted and deleted.id == ids[0]
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(ids[0])
    assert not (svc.data_dir / "files" / ids[0]).exists()


def test_image_and_video_purposes_are_accepted(local_service, tmp_path):
    svc = local_service(profile="moonshot")
    client = sdk(svc)
    (tmp_path / "cat.png").write_bytes(b"\x89PNG fake image")
    image = client.files.create(file=tmp_path / "cat.png", purpose="image")  # type: ignore[arg-type]
    assert image.purpose == "image"
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=tmp_path / "cat.png", purpose="fine-tune")


def test_upload_purposes_are_the_posed_providers(local_service, tmp_path):
    client = sdk(local_service(profile="openai"))
    (tmp_path / "notes.jsonl").write_text('{"a": 1}\n')
    for purpose in ("user_data", "fine-tune", "assistants", "vision", "evals", "batch"):
        assert client.files.create(file=tmp_path / "notes.jsonl", purpose=purpose).purpose == purpose  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=tmp_path / "notes.jsonl", purpose="image")  # type: ignore[arg-type]  # Moonshot's, not OpenAI's


@pytest.mark.parametrize("endpoint", ["/v1/images/generations", "/v1/images/edits", "/v1/videos"])
def test_sdk_batches_the_image_and_video_endpoints(local_service, tmp_path, endpoint):
    svc = local_service(profile="openai")
    client = sdk(svc)
    body = {"model": "sora-2" if endpoint == "/v1/videos" else "gpt-image-1", "prompt": "A lighthouse at dusk"}
    path = write_lines(tmp_path / "media.jsonl", [{"custom_id": "m-0", "method": "POST", "url": endpoint, "body": body}])
    uploaded = client.files.create(file=path, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h")
    assert batch.endpoint == endpoint
    done = wait_until(lambda: (b := client.batches.retrieve(batch.id)).status in ("completed", "failed") and b)
    assert done.status == "completed" and done.request_counts.completed == 1, done.errors
    line = json.loads(client.files.content(done.output_file_id).text)
    assert line["custom_id"] == "m-0" and line["response"]["status_code"] == 200


def test_the_sdk_reads_model_and_usage(local_service, tmp_path):
    svc = local_service(profile="openai")
    client = sdk(svc)
    lines = [{"custom_id": f"r-{i}", "method": "POST", "url": "/v1/responses", "body": {"model": "gpt-5-mini", "input": f"Say {i}"}} for i in range(3)]
    uploaded = client.files.create(file=write_lines(tmp_path / "r.jsonl", lines), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h")
    wait_for_batch(svc.engine, batch.id)
    batch = client.batches.retrieve(batch.id)
    answers = [json.loads(line)["response"]["body"]["usage"] for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert batch.model == "gpt-5-mini"
    assert batch.usage.input_tokens == sum(a["input_tokens"] for a in answers)
    assert batch.usage.output_tokens == sum(a["output_tokens"] for a in answers)
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens
    assert batch.usage.input_tokens_details.cached_tokens == 0 and batch.usage.output_tokens_details.reasoning_tokens == 0


# File expiry: the service's time_scale speeds it up as it does completion windows (at 3600 an
# hour's policy lasts a second); a month's policy (720 s then) shows what has not expired stays.
HOUR, MONTH = 3600, 2_592_000
SCALE = 3600


def _gone(client: openai.OpenAI, file_id: str) -> bool:
    try:
        client.files.retrieve(file_id)
    except openai.NotFoundError:
        return True
    return False


def test_the_sdk_uploads_files_that_expire(local_service, tmp_path):
    svc = local_service(profile="openai", time_scale=SCALE)
    client = sdk(svc)
    path = write_requests(tmp_path / "requests.jsonl", 2)
    short = client.files.create(file=path, purpose="batch", expires_after={"anchor": "created_at", "seconds": HOUR})
    month = client.files.create(file=path, purpose="batch", expires_after={"anchor": "created_at", "seconds": MONTH})
    forever = client.files.create(file=path, purpose="batch")
    assert short.expires_at == short.created_at + HOUR // SCALE
    assert month.expires_at == month.created_at + MONTH // SCALE and forever.expires_at is None

    wait_until(lambda: _gone(client, short.id))
    with pytest.raises(openai.NotFoundError):
        client.files.content(short.id)
    listed = {f.id for f in client.files.list()}
    assert short.id not in listed and {month.id, forever.id} <= listed
    assert client.files.retrieve(month.id).expires_at == month.expires_at
    assert not svc.engine.store.file_path(short.id).exists()  # its bytes went with it
    # An expired input is no input.
    with pytest.raises(openai.BadRequestError, match="no such file"):
        client.batches.create(input_file_id=short.id, endpoint=CHAT, completion_window="24h")


def test_the_sdk_creates_a_batch_whose_output_expires(local_service, tmp_path):
    svc = local_service(profile="openai", time_scale=SCALE)
    client = sdk(svc)
    uploaded = client.files.create(file=write_requests(tmp_path / "requests.jsonl", 3), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": HOUR},
    )
    wait_for_batch(svc.engine, batch.id)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.output_file_id
    output = svc.engine.store.read_one("SELECT created_at, expires_at FROM files WHERE id = ?", (done.output_file_id,))
    assert output["expires_at"] == output["created_at"] + HOUR // SCALE
    wait_until(lambda: _gone(client, done.output_file_id))
    with pytest.raises(openai.NotFoundError):
        client.files.content(done.output_file_id)
    assert client.files.retrieve(uploaded.id).expires_at is None  # the input has its own policy: none
