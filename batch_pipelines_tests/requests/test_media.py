"""Media parts: data URLs, uploaded file references reused across retries, nothing uploaded for a failing
build, media problems as row problems, and references the local service accepts."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pandas as pd
import pytest

from batch_pipelines.providers.openai_compatible import OpenAICompatibleProvider
from batch_pipelines.requests import MediaFile, MediaPart, RequestSpec, RequestValidationError, build_request_files
from batch_pipelines_tests.support.frames import MOONSHOT, OPENAI, chat_spec, codes, request_lines, user_text
from batch_pipelines_tests.support.request_files import CHAT
from batch_pipelines_tests.support.waiting import wait_for_batch

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(30)


def _image_frame(tmp_path: Path) -> pd.DataFrame:
    (tmp_path / "cat.png").write_bytes(PNG)
    (tmp_path / "photo.bin").write_bytes(b"\xff\xd8\xff" + bytes(20))  # JPEG by its magic bytes
    return pd.DataFrame(
        {
            "text": ["a", "b", "c", "d", "e"],
            "img": pd.Series(
                [str(tmp_path / "cat.png"), tmp_path / "photo.bin", PNG, "https://example.com/x.png", f"file://{tmp_path / 'cat.png'}"],
                dtype=object,
            ),
        }
    )


def test_media_as_data_urls(tmp_path):
    df = _image_frame(tmp_path)
    spec = chat_spec(media=[MediaPart(column="img", detail="low")])
    sent = request_lines(build_request_files(df, spec, tmp_path / "req", profile=OPENAI))
    png_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    jpeg_url = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff" + bytes(20)).decode()
    assert [user_text(line)[0]["image_url"]["url"] for line in sent] == [png_url, jpeg_url, png_url, "https://example.com/x.png", png_url]
    assert user_text(sent[0]) == [
        {"type": "image_url", "image_url": {"url": png_url, "detail": "low"}},
        {"type": "text", "text": "Text: a"},
    ]
    assert sent[0]["body"]["messages"][0] == {"role": "system", "content": "Classify."}


def test_media_as_file_references_through_the_uploader(tmp_path):
    df = _image_frame(tmp_path)
    uploads: list[MediaFile] = []

    def upload(media: MediaFile) -> str:
        uploads.append(media)
        return f"ms://file-{len(uploads)}"

    spec = chat_spec(model="kimi-k2.5", media=[MediaPart(column="img", transport="file")])
    manifest = build_request_files(df, spec, tmp_path / "req", profile=MOONSHOT, upload_media=upload)
    urls = [user_text(line)[0]["image_url"]["url"] for line in request_lines(manifest)]
    assert urls == ["ms://file-1", "ms://file-2", "ms://file-1", "https://example.com/x.png", "ms://file-1"]
    assert [(u.kind, u.mime_type, u.name) for u in uploads] == [("image", "image/png", "cat.png"), ("image", "image/jpeg", "photo.bin")]
    assert uploads[0].sha256 == hashlib.sha256(PNG).hexdigest() and uploads[0].data == PNG
    assert manifest.media_refs == {uploads[0].sha256: "ms://file-1", uploads[1].sha256: "ms://file-2"}
    # a retry hands the references back: nothing is uploaded again
    build_request_files(df, spec, tmp_path / "retry", profile=MOONSHOT, upload_media=upload, media_refs=manifest.media_refs, attempt=2)
    assert len(uploads) == 2


def test_nothing_is_uploaded_once_the_build_must_fail(tmp_path):
    df = _image_frame(tmp_path)
    df.loc[4, "text"] = None  # known before any line is built
    calls: list[MediaFile] = []
    spec = chat_spec(media=[MediaPart(column="img", transport="file")])
    with pytest.raises(RequestValidationError) as exc:
        build_request_files(df, spec, tmp_path / "req", profile=OPENAI, upload_media=lambda m: calls.append(m) or "ms://x")
    assert calls == [] and codes(exc) == {"missing_value": 1}
    refs: dict[str, str] = {}
    df.loc[4, "text"] = "ok"
    df.loc[3, "img"] = str(tmp_path / "gone.png")  # found only while building lines, after uploads began
    with pytest.raises(RequestValidationError, match="cannot read"):
        build_request_files(df, spec, tmp_path / "req", profile=OPENAI, upload_media=lambda m: f"ms://{m.sha256[:8]}", media_refs=refs)
    assert sorted(refs.values()) == sorted(f"ms://{h[:8]}" for h in {hashlib.sha256(PNG).hexdigest(), hashlib.sha256(b"\xff\xd8\xff" + bytes(20)).hexdigest()})


def test_auto_transport_uploads_large_or_reused_media(tmp_path):
    big = b"\x89PNG\r\n\x1a\n" + bytes(5_000)
    small = b"\x89PNG\r\n\x1a\n" + b"small"
    df = pd.DataFrame({"text": list("abcd"), "img": pd.Series([big, small, PNG, PNG], dtype=object)})
    refs = iter(["ms://big", "ms://reused"])
    spec = chat_spec(media=[MediaPart(column="img", transport="auto", inline_max_bytes=1_000)])
    manifest = build_request_files(df, spec, tmp_path, profile=OPENAI, upload_media=lambda media: next(refs))
    urls = [user_text(line)[0]["image_url"]["url"] for line in request_lines(manifest)]
    assert urls == ["ms://big", "data:image/png;base64," + base64.b64encode(small).decode(), "ms://reused", "ms://reused"]


def test_video_parts_and_responses_images(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(MP4)
    df = pd.DataFrame({"text": ["a"], "clip": [str(tmp_path / "clip.mp4")], "img": [PNG]})
    video = chat_spec(model="kimi-k2.5", media=[MediaPart(column="clip", kind="video")])
    part = user_text(request_lines(build_request_files(df, video, tmp_path / "v", profile=MOONSHOT))[0])[0]
    assert part == {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(MP4).decode()}}
    spec = RequestSpec(model="m", endpoint="/v1/responses", input_template="Describe {text}", media=[MediaPart(column="img")])
    line = request_lines(build_request_files(df, spec, tmp_path / "r", profile=OPENAI))[0]
    assert line["body"]["input"] == [
        {
            "role": "user",
            "content": [
                {"type": "input_image", "image_url": "data:image/png;base64," + base64.b64encode(PNG).decode()},
                {"type": "input_text", "text": "Describe a"},
            ],
        }
    ]


def test_media_problems_are_row_problems(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(MP4)
    (tmp_path / "notes.txt").write_bytes(b"hello")
    df = pd.DataFrame(
        {"text": list("abcde"), "img": pd.Series([PNG, str(tmp_path / "gone.png"), str(tmp_path / "clip.mp4"), b"??", 42], dtype=object)}
    )
    manifest = build_request_files(df, chat_spec(media=[MediaPart(column="img")]), tmp_path / "req", profile=OPENAI, policy="quarantine")
    assert manifest.requests == 1
    messages = {r.row: r.message for r in manifest.rejected}
    assert "cannot read" in messages[1] and "is video/mp4, not an image" in messages[2]
    assert "cannot tell the media type" in messages[3] and "int is not a path, URL or bytes" in messages[4]
    assert all(r.reasons == ["media_error"] for r in manifest.rejected)
    with pytest.raises(RequestValidationError, match="pass upload_media"):
        build_request_files(df, chat_spec(media=[MediaPart(column="img", transport="file")]), tmp_path / "x", profile=OPENAI)


def test_local_service_accepts_media_file_references(local_service, tmp_path):
    svc = local_service(profile="moonshot")
    (tmp_path / "cat.png").write_bytes(PNG)
    df = pd.DataFrame({"text": ["first", "second"], "img": [str(tmp_path / "cat.png")] * 2})
    spec = chat_spec(model="kimi-k2.5", media=[MediaPart(column="img", transport="file")])
    with OpenAICompatibleProvider("moonshot", api_key=svc.api_key, base_url=svc.base_url, max_retries=0) as provider:

        def upload(media: MediaFile) -> str:  # what the provider layer supplies: upload once, reference by id
            path = tmp_path / media.name
            path.write_bytes(media.data)
            return f"ms://{provider.upload_file(path, purpose=media.kind).id}"

        manifest = build_request_files(df, spec, tmp_path / "req", profile=MOONSHOT, upload_media=upload)
        (ref,) = manifest.media_refs.values()
        assert re.fullmatch(r"ms://\S+", ref)
        batch = provider.submit(manifest.shards[0].path, endpoint=CHAT)
        done = wait_for_batch(svc.engine, batch.id)
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 2
