"""Lines of a template spec: no value can break a line, the bytes equal orjson's, the input goes where the
endpoint wants it."""

from __future__ import annotations

import json

import orjson
import pandas as pd
import pytest

from batch_pipelines.requests import RequestSpec, build_request_files, custom_ids
from batch_pipelines_tests.support.frames import NASTY, OPENAI, chat_spec, request_lines, small_chunks
from batch_pipelines_tests.support.request_files import CHAT


def test_no_value_can_break_a_line_and_output_equals_orjson(tmp_path, monkeypatch):
    small_chunks(monkeypatch)
    keys = [f"k{i}\n\"'" for i in range(len(NASTY))]
    df = pd.DataFrame({"text": NASTY, "other": list(reversed(NASTY))}, index=keys)
    system = 'Rules: "quote" \\ back\nslash {{literal}}'
    spec = chat_spec(messages=[{"role": "system", "content": system}, {"role": "user", "content": "{text}|{other}|{text}"}])
    manifest = build_request_files(df, spec, tmp_path, profile=OPENAI)
    raw = manifest.shards[0].path.read_bytes()
    assert raw.count(b"\n") == len(NASTY)
    ids = custom_ids(df.index)
    for i, line in enumerate(raw.splitlines()):
        expected = {
            "custom_id": ids.iloc[i],
            "method": "POST",
            "url": CHAT,
            "body": {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": 'Rules: "quote" \\ back\nslash {literal}'},
                    {"role": "user", "content": f"{NASTY[i]}|{NASTY[-1 - i]}|{NASTY[i]}"},
                ],
            },
        }
        assert line == orjson.dumps(expected)  # byte-identical to orjson of the request dict
        assert json.loads(line) == expected  # and plain JSON agrees


@pytest.mark.parametrize(
    ("endpoint", "field"),
    [("/v1/responses", "input"), ("/v1/embeddings", "input"), ("/v1/completions", "prompt"), ("/v1/moderations", "input")],
)
def test_input_template_goes_where_the_endpoint_wants_it(tmp_path, endpoint, field):
    spec = RequestSpec(model="m", endpoint=endpoint, input_template="Q: {q}", body={"user": "u1"})
    line = request_lines(build_request_files(pd.DataFrame({"q": ["why?"]}), spec, tmp_path, profile=OPENAI))[0]
    assert line["url"] == endpoint and line["body"] == {"model": "m", field: "Q: why?", "user": "u1"}


def test_input_template_on_chat_is_one_user_message(tmp_path):
    spec = RequestSpec(model="m", input_template="Q: {q}")
    line = request_lines(build_request_files(pd.DataFrame({"q": ["why?"]}), spec, tmp_path, profile=OPENAI))[0]
    assert line["body"]["messages"] == [{"role": "user", "content": "Q: why?"}]
