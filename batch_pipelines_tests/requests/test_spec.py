"""RequestSpec: exactly one way to build a body, what cannot work refused up front, the columns it reads."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from batch_pipelines.requests import MediaPart, RequestSpec
from batch_pipelines_tests.support.frames import chat_spec


def test_spec_needs_exactly_one_way_to_build_a_body():
    with pytest.raises(ValidationError, match="exactly one of"):
        RequestSpec(model="m")
    with pytest.raises(ValidationError, match="exactly one of"):
        RequestSpec(model="m", input_template="{a}", build_body=lambda row: {})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_template": "a } b"}, "literal braces"),
        ({"input_template": "a {} b"}, "name a column"),
        ({"input_template": "{x:{w}}"}, "nested"),
        ({"input_template": "{x}", "body": {"model": "other"}}, "spec's own fields"),
        ({"messages": [{"role": "user", "content": "{x}"}], "endpoint": "/v1/embeddings"}, "use input_template"),
        ({"input_template": "{x}", "endpoint": "/v1/nope"}, "not one of"),
        ({"input_template": "{x}", "media": [MediaPart(column="img")], "endpoint": "/v1/embeddings"}, "media parts need"),
        ({"messages": [{"role": "system", "content": "{x}"}], "media": [MediaPart(column="img")]}, "user message"),
    ],
)
def test_spec_rejects_what_cannot_work(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        RequestSpec(model="m", **kwargs)


def test_spec_columns_in_first_use_order():
    spec = chat_spec(
        messages=[{"role": "system", "content": "{b} {{literal}}"}, {"role": "user", "content": "{a} {b:>5} {c!r}"}],
        media=[MediaPart(column="img")],
    )
    assert spec.columns == ["b", "a", "c", "img"]
