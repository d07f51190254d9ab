"""The pipeline end to end through Dagster on the local service posing as Gemini over HTTP.

The same factory, sensor and resource as on OpenAI: only the resource's ``provider`` and the
spec's endpoint change. Gemini batches carry their tags in the displayName, so re-attaching finds
them at the provider; the fault plans are the service's own (set before a submit, cleared before
the retries), as a Gemini batch has no metadata to carry a plan.
"""

from __future__ import annotations

import pytest

from batch_pipelines import RequestSpec
from batch_pipelines.pipeline import REUSE_RUN_TAG
from batch_pipelines.local_service import FaultPlan
from batch_pipelines.profiles import GENERATE_CONTENT
from batch_pipelines_tests.support.driver import CATEGORIES, KEY_ENV, Label
from batch_pipelines_tests.support.service import service_batches

DAYS2 = ["2024-01-01", "2024-01-02"]

SPEC = RequestSpec(
    endpoint=GENERATE_CONTENT,
    model="gemini-2.5-flash",
    messages=[
        {"role": "system", "content": "Classify the text into one of: " + "/".join(CATEGORIES)},
        {"role": "user", "content": "Please classify the following text: {text}"},
    ],
    body={"generationConfig": {"maxOutputTokens": 200}},
    output_model=Label,
    key_column="text_id",
)


@pytest.fixture
def gemini(local_service, monkeypatch):
    def start(**options):
        svc = local_service(profile="gemini", **options)
        monkeypatch.setenv(KEY_ENV, svc.api_key)
        return svc

    return start


def on_gemini(harness, svc, rows: int, **options):
    return harness(rows=rows, on=svc, resource={"provider": "gemini"}, spec=SPEC, **options)


def test_partitions_structured_output_retries_and_expiry(harness, gemini):
    svc = gemini()
    h = on_gemini(harness, svc, rows=20)
    svc.set_faults(FaultPlan(row_failures={429: 0.2}, seed=3))  # the first day's batch: rate-limited rows
    h.submit([DAYS2[0]])
    svc.set_faults(FaultPlan(expire_after=0.5))  # the second day's batch expires half way
    h.submit([DAYS2[1]])
    svc.set_faults(FaultPlan())  # retries run clean
    assert [b["status"] for b in service_batches(svc)] and len(service_batches(svc)) == 2
    assert h.submission(DAYS2[0])["provider"] == "gemini"
    # Each batch carries its pipeline, partition and shard fingerprint in its displayName.
    names = [b["metadata"]["displayName"] for b in service_batches(svc)]
    assert all("bp_partition=" in n and "bp_fingerprint=" in n and "bp_pipeline=" in n for n in names)

    h.drive(DAYS2)

    for day in DAYS2:
        frame = h.results(day)
        assert frame["text_id"].tolist() == [f"{day}-{i:03d}" for i in range(20)] and frame["custom_id"].is_unique
        assert set(frame["outcome"]) == {"succeeded"}
        assert frame["output_category"].isin(CATEGORIES).all()
        assert (frame["prompt_tokens"] > 0).all()
        retried = frame[frame["attempt"] == 2]
        assert 0 < len(retried) < 20  # only the failed or expired rows went again
        meta = h.latest_metadata(h.pipeline.results_asset, day)
        assert meta["attempts"] == 2 and meta["succeeded"] == 20
    # The expired batch's finished half was kept, not sent again.
    expired = [b for b in service_batches(svc) if b["status"] == "expired"]
    assert len(expired) == 1 and 0 < expired[0]["request_counts"]["completed"] < 20
    assert len(service_batches(svc)) == 4  # one batch per day and attempt, none twice
    # Submitting a finished day again sends nothing: every answer is reused.
    h.submit([DAYS2[0]])
    assert h.latest_metadata(h.pipeline.requests_asset, DAYS2[0])["rows_to_send"] == 0
    assert len(service_batches(svc)) == 4
    # A full resend (reuse bypassed for the run) re-attaches through the displayName's tags: nothing paid twice.
    h.run([h.texts, h.pipeline.requests_asset, h.pipeline.batch_asset], DAYS2[0], tags={REUSE_RUN_TAG: "off"})
    assert h.submission(DAYS2[0])["reattached"] == 1
    assert len(service_batches(svc)) == 4
    for run in h.instance.get_runs():
        assert not [e for e in h.instance.all_logs(run.run_id) if svc.api_key in str(e)]


def test_cancel_job_stops_the_partition(harness, gemini):
    svc = gemini(speed="realistic")
    h = on_gemini(harness, svc, rows=60)
    day = DAYS2[0]
    h.submit([day])
    [batch] = service_batches(svc)

    job = h.defs.resolve_job_def(h.pipeline.cancel_job.name)
    result = job.execute_in_process(instance=h.instance, run_config={"ops": {"classify_cancel_batches": {"config": {"partitions": [day]}}}})

    assert result.success
    assert svc.engine.get_batch(batch["id"])["status"] in ("cancelling", "cancelled")
    h.drive([day])
    frame = h.results(day)
    assert len(frame) == 60 and "cancelled" in set(frame["outcome"])
    assert len(service_batches(svc)) == 1  # cancelled rows were not sent again
