"""Bad input through the pipeline: a clear error naming rows and fields before anything is uploaded,
or a ``rejected`` row; never a crash deep inside.

Each problem is checked at unit level in ``batch_pipelines_tests/requests/``; here it goes through the Dagster
assets, and the local service proves that nothing reached it.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from pydantic import BaseModel

from batch_pipelines import BatchProviderResource, RequestSpec, build_batch_pipeline
from batch_pipelines.local_service import FaultPlan
from batch_pipelines.profiles import ProviderProfile
from batch_pipelines_tests.support.driver import SPEC
from batch_pipelines_tests.support.service import service_batches
from batch_pipelines_tests.support.waiting import wait_for_batch
from batch_pipelines_tests.reliability.world import batch_faults

DAY = "2024-01-01"
#: Smaller than a row of 30,000 characters, larger than the others.
_SMALL_FILE_BYTES = 20_000


class SmallFiles(BatchProviderResource):
    """The provider, but with 20 kB files: a long text is a row too large for any file."""

    @property
    def profile(self) -> ProviderProfile:
        return dataclasses.replace(super().profile, max_file_bytes=_SMALL_FILE_BYTES)


def _set(row: int, column: str, value: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({column: object})
        frame.at[row, column] = value
        return frame

    return edit


_MIXED = RequestSpec(
    model="kimi-k2.5",
    build_body=lambda row: {
        "model": "kimi-k2.5" if int(row["text_id"][-1]) % 2 else "kimi-k2-turbo",
        "messages": [{"role": "user", "content": row["text"]}],
    },
    key_column="text_id",
)
_FORBIDDEN = RequestSpec(
    model="kimi-k2.5", messages=[{"role": "user", "content": "{text}"}], body={"temperature": 0.3}, key_column="text_id"
)

BAD_INPUT = {
    # name: (edit of the 6-row source, pipeline options, resource options, words the error must hold)
    "nan": (_set(2, "text", np.nan), {}, {}, ["missing_value", "2024-01-01-002", "'text' is missing"]),
    "none": (_set(4, "text", None), {}, {}, ["missing_value", "2024-01-01-004", "'text'"]),
    "too_large": (_set(1, "text", "x" * 30_000), {}, {"cls": SmallFiles}, ["too_large", "2024-01-01-001", "bytes"]),
    "duplicate_keys": (_set(3, "text_id", "2024-01-01-000"), {}, {}, ["duplicate_key", "2024-01-01-000", "row 3"]),
    "missing_column": (lambda f: f.drop(columns="text"), {}, {}, ["missing_column", "column 'text'"]),
    "non_utf8": (_set(5, "text", b"caf\xe9 \xff"), {}, {}, ["invalid_utf8", "2024-01-01-005", "'text'"]),
    "forbidden_param": (None, {"spec": _FORBIDDEN}, {"provider": "moonshot"}, ["forbidden_param", "temperature", "kimi-k2.5"]),
    "mixed_models": (None, {"spec": _MIXED}, {"provider": "moonshot"}, ["model_mismatch", "kimi-k2-turbo"]),
    "empty_partition": (lambda f: f.iloc[0:0], {}, {}, ["empty_input", "no rows"]),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=str)
def test_bad_input_fails_the_requests_run_clearly_before_any_upload(harness, service, case):
    edit, options, resource, words = BAD_INPUT[case]
    h = harness(rows=6, edit=edit, resource=resource, **options)

    result = h.materialize([h.texts, h.pipeline.requests_asset, h.pipeline.batch_asset], DAY, raise_on_error=False)

    assert not result.success
    error = result.failure_data_for_node("classify_requests").error
    assert error.cls_name == "Failure", error.cls_name  # the asset's own clear error, not a crash inside
    for word in words:
        assert word in error.message, f"{word!r} not in {error.message!r}"
    assert not [e for e in result.all_events if e.step_key == "classify_batch" and e.is_step_start]
    assert service.engine.list_files()["data"] == [] and service_batches(service) == []


def test_under_quarantine_bad_rows_come_back_rejected_and_only_good_rows_are_sent(harness, service):
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        for row, column, value in ((1, "text", np.nan), (2, "text", b"\xff"), (3, "text", "x" * 30_000), (5, "text_id", "2024-01-01-004")):
            frame = _set(row, column, value)(frame)
        return frame

    h = harness(rows=8, edit=edit, policy="quarantine", resource={"cls": SmallFiles})
    h.submit([DAY])
    meta = h.latest_metadata(h.pipeline.requests_asset, DAY)
    assert (meta["rows"], meta["rejected_rows"], meta["requests"]) == (8, 5, 3)

    h.drive([DAY])

    frame = h.results(DAY)
    assert len(frame) == 8
    assert frame["outcome"].astype(str).tolist() == ["succeeded", "rejected", "rejected", "rejected", "rejected", "rejected", "succeeded", "succeeded"]
    assert frame["error_code"].tolist()[1:6] == ["missing_value", "invalid_utf8", "too_large", "duplicate_key", "duplicate_key"]
    [uploaded] = service.engine.list_files(purpose="batch")["data"]
    sent = service.engine.file_content_path(uploaded["id"]).read_bytes().splitlines()
    assert [orjson.loads(line)["custom_id"] for line in sent] == ["2024-01-01-000", "2024-01-01-006", "2024-01-01-007"]


def test_an_output_model_without_a_json_schema_stops_the_definitions(service):
    class Opaque(BaseModel):
        judge: Callable[[str], bool]

    with pytest.raises(ValueError, match="Opaque cannot become a JSON schema"):
        build_batch_pipeline("classify", source="texts", spec=RequestSpec(**{**SPEC.__dict__, "output_model": Opaque}))
    assert service.engine.list_files()["data"] == []


def test_a_malformed_result_file_is_counted_and_its_rows_sent_again(harness, service):
    h = harness(rows=10)
    h.submit([DAY])
    [batch] = service_batches(service)
    done = wait_for_batch(service.engine, batch["id"])
    # The provider serves a broken output file: an HTML error page, bytes that are not UTF-8, a cut line.
    service.engine.file_content_path(done["output_file_id"]).write_bytes(
        b"<html><body>502 Bad Gateway</body></html>\n\xff\xfe\x00\x01 not text\n{\"custom_id\": \"2024-01-01-000\", \"resp\n"
    )

    h.drive([DAY])

    frame = h.results(DAY)
    assert len(frame) == 10 and set(frame["outcome"]) == {"succeeded"} and set(frame["attempt"]) == {2}
    meta = h.latest_metadata(h.pipeline.results_asset, DAY)
    assert meta["corrupt_lines"] == 3 and meta["attempts"] == 2


def test_rejected_rows_without_a_custom_id_survive_a_retry_round(harness, service):
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        return _set(5, "text_id", "2024-01-01-004")(_set(2, "text_id", None)(frame))

    h = harness(rows=10, edit=edit, policy="quarantine", batch_tags=batch_faults({None: FaultPlan(row_failures={500: 0.5}, seed=2)}))
    h.submit([DAY])
    h.drive([DAY])

    frame = h.results(DAY)
    assert len(frame) == 10
    assert frame["outcome"].astype(str).tolist().count("rejected") == 3
    assert (frame["attempt"] == 2).any()
