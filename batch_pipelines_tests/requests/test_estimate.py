"""Tokens before sending: input from the bytes, output bounded only by a cap every request carries."""

from __future__ import annotations

import math

import pandas as pd

from batch_pipelines.profiles import get_profile
from batch_pipelines.requests import BYTES_PER_TOKEN, RequestSpec, build_request_files, estimate_requests

SPEC = RequestSpec(model="gpt-4o-mini", messages=[{"role": "user", "content": "Classify: {text}"}])


def test_the_estimate_counts_bytes_and_the_answer_cap(tmp_path):
    frame = pd.DataFrame({"text": ["a" * 400, "b" * 40, "c"]})
    for spec, cap in ((SPEC, None), (SPEC.model_copy(update={"body": {"max_tokens": 30}}), 90),
                      (SPEC.model_copy(update={"body": {"max_completion_tokens": 7}}), 21)):  # fmt: skip
        manifest = build_request_files(frame, spec, tmp_path / str(cap), profile=get_profile("openai"))
        estimate = estimate_requests(manifest, spec)
        assert estimate.requests == 3 and estimate.max_output_tokens == cap
        assert estimate.input_tokens == math.ceil(sum(s.bytes for s in manifest.shards) / BYTES_PER_TOKEN)
        assert estimate.input_tokens > 441 / BYTES_PER_TOKEN  # the texts alone
