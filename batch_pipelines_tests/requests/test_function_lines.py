"""Lines of a build_body spec: every returned body is checked, and the bytes equal a template's."""

from __future__ import annotations

import numpy as np
import pandas as pd

from batch_pipelines.requests import RequestSpec, build_request_files
from batch_pipelines_tests.support.frames import MOONSHOT, NASTY, OPENAI, chat_spec, request_lines


def test_build_body_rows_are_checked(tmp_path):
    def body(row):
        if row["i"] == 1:
            raise KeyError("boom")
        if row["i"] == 2:
            return {"model": "other-model"}
        if row["i"] == 3:
            return {"temperature": 0.3}
        if row["i"] == 4:
            return {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": float("nan")}}
        if row["i"] == 5:
            return ["not", "a", "dict"]
        if row["i"] == 6:
            return {"messages": [], "extra": object()}
        return {"messages": [{"role": "user", "content": f"n={row['n']}"}], "seed": row["n"]}

    df = pd.DataFrame({"i": range(8), "n": np.arange(8, dtype=np.int64) * 10})
    spec = RequestSpec(model="kimi-k2.5", build_body=body)
    manifest = build_request_files(df, spec, tmp_path, profile=MOONSHOT, policy="quarantine")
    assert {r.row: r.reasons[0] for r in manifest.rejected} == {
        1: "build_body_error",
        2: "model_mismatch",
        3: "forbidden_param",
        4: "invalid_value",
        5: "build_body_error",
        6: "unserializable",
    }
    sent = request_lines(manifest)
    assert [line["body"] for line in sent] == [
        {"model": "kimi-k2.5", "messages": [{"role": "user", "content": f"n={n}"}], "seed": n} for n in (0, 70)
    ]
    assert "build_body raised KeyError: 'boom'" in manifest.rejected[0].message
    # another model is fine where the provider takes several per file
    assert build_request_files(df.iloc[[2]], RequestSpec(model="gpt-4o-mini", build_body=body), tmp_path, profile=OPENAI).requests == 1


def test_template_and_function_specs_write_the_same_bytes(tmp_path):
    df = pd.DataFrame({"text": NASTY})
    template = chat_spec(body={"max_tokens": 7})
    function = RequestSpec(
        model="gpt-4o-mini",
        body={"max_tokens": 7},
        build_body=lambda row: {"messages": [{"role": "system", "content": "Classify."}, {"role": "user", "content": f"Text: {row['text']}"}]},
    )
    a = build_request_files(df, template, tmp_path / "a", profile=OPENAI)
    b = build_request_files(df, function, tmp_path / "b", profile=OPENAI)
    assert a.shards[0].path.read_bytes() == b.shards[0].path.read_bytes()
