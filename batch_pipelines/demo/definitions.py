"""The demo: five days of short texts, classified into five categories through a Batch API.

``texts`` (one partition per day, read from the CSV shipped in ``data/``) feeds the pipeline
``classify_texts`` built by :func:`~batch_pipelines.pipeline.factory.build_batch_pipeline`: request files,
submitted batches, a sensor that polls them, and the results joined back to the texts, each row
with a :class:`TextCategory` parsed from the model's structured output. DataFrames are stored as
Parquet files under ``$DAGSTER_HOME/storage``.

It runs on the embedded ``local`` provider with no key. The environment picks another one:

=================================================  =====================================================
``BATCH_PIPELINES_PROVIDER``                       ``local`` (default), ``moonshot``, ``openai``, ``fastapi_ai``,
                                                   ``groq``, ``anthropic``, ``gemini`` or ``custom`` (any OpenAI-compatible
                                                   base URL)
the provider's key variable                        ``MOONSHOT_API_KEY``, ``OPENAI_API_KEY``, ``FAST_API_KEY``,
                                                   ``GROQ_API_KEY``, ``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY`` (or
                                                   ``GOOGLE_API_KEY``); ``BATCH_PIPELINES_API_KEY`` for ``custom``
``BATCH_PIPELINES_LOCAL_PROFILE``                  the provider the local one poses as: ``moonshot`` (default),
                                                   ``anthropic`` (Message Batches, no key) or ``gemini`` (Batch Mode,
                                                   no key), any profile
``BATCH_PIPELINES_MODEL``                          default ``kimi-k2.5`` (local, moonshot), ``gpt-4o-mini``
                                                   (openai, fastapi_ai), ``claude-haiku-4-5`` (anthropic),
                                                   ``gemini-2.5-flash`` (gemini); required for the others
``BATCH_PIPELINES_BASE_URL``                       overrides the provider's base URL (required for ``custom``)
``BATCH_PIPELINES_LOCAL_SPEED``                    ``realistic`` (default: progress over a few seconds) or
                                                   ``instant``
``BATCH_PIPELINES_LOCAL_SECONDS_PER_REQUEST``      the least time each request takes locally (default 0),
                                                   to watch a batch in progress
``BATCH_PIPELINES_SENSOR_INTERVAL``                seconds between sensor ticks (default 5 locally, else 60)
``BATCH_PIPELINES_INPUT_PRICE``,                   real-time USD per million input / output tokens, for the
``BATCH_PIPELINES_OUTPUT_PRICE``                   cost metadata (the batch discount is applied)
=================================================  =====================================================
"""

import os
from pathlib import Path
from typing import Literal, get_args

import dagster as dg
import pandas as pd
from pydantic import BaseModel, Field

from batch_pipelines.demo.parquet_io import ParquetIOManager
from batch_pipelines.pipeline import BatchProviderResource, build_batch_pipeline
from batch_pipelines.pipeline.options import DEFAULT_OPTIONS
from batch_pipelines.profiles import GENERATE_CONTENT, MESSAGES, PROFILES
from batch_pipelines.providers import LOCAL
from batch_pipelines.requests import RequestSpec

__all__ = [
    "CATEGORIES",
    "DATA_FILE",
    "DAYS",
    "Category",
    "TextCategory",
    "classify_texts",
    "defs",
    "request_spec",
    "submit_texts",
    "texts",
]

DATA_FILE = Path(__file__).parent / "data" / "texts.csv"
#: One partition per day of shipped texts (end date exclusive).
DAYS = dg.DailyPartitionsDefinition(start_date="2026-03-02", end_date="2026-03-07")
Category = Literal["Literature", "News", "Academic", "Technology", "Lifestyle"]
CATEGORIES: tuple[str, ...] = get_args(Category)

_PROVIDER = os.environ.get("BATCH_PIPELINES_PROVIDER", LOCAL)
_LOCAL_PROFILE = os.environ.get("BATCH_PIPELINES_LOCAL_PROFILE", "moonshot")
#: The profile whose protocol the requests are written for (the local provider's posed-as one).
_PROFILE = PROFILES.get(_LOCAL_PROFILE if _PROVIDER == LOCAL else _PROVIDER)
_ANTHROPIC = _PROFILE is not None and _PROFILE.protocol == "anthropic"
_GEMINI = _PROFILE is not None and _PROFILE.protocol == "gemini"
_DEFAULT_MODELS = {
    LOCAL: "claude-haiku-4-5" if _ANTHROPIC else "gemini-2.5-flash" if _GEMINI else "kimi-k2.5",
    "moonshot": "kimi-k2.5",
    "openai": "gpt-4o-mini",
    "fastapi_ai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash",
}


class TextCategory(BaseModel):
    """The model's answer for one text (its JSON schema is sent as the structured output format)."""

    category: Category
    confidence: float = Field(ge=0, le=1, description="How sure the model is, from 0 to 1.")
    reason: str = Field(description="One short sentence explaining the choice.")


@dg.asset(
    partitions_def=DAYS,
    io_manager_key="parquet_io_manager",
    group_name="classify_texts",
    kinds={"pandas", "csv"},
    description="The day's texts to classify: text_id, day, label (a human's category) and text.",
    # Several days per backfill run, as the pipeline's assets take them: one run reads them all.
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=DEFAULT_OPTIONS.max_partitions_per_run),
)
def texts(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    rows = pd.read_csv(DATA_FILE, dtype=str)
    by_day = {day: rows[rows["day"] == day].reset_index(drop=True) for day in context.partition_keys}
    for day, frame in by_day.items():
        metadata = {"rows": len(frame), "labels": dg.MetadataValue.json(frame["label"].value_counts().to_dict())}
        context.add_asset_metadata(metadata, partition_key=day)
    # A run over several days stores {day: DataFrame}, one Parquet file each (see parquet_io.py).
    return dg.MaterializeResult(value=by_day if len(by_day) > 1 else next(iter(by_day.values())))


def _provider_from_env() -> BatchProviderResource:
    prices = {
        field: float(os.environ[var])
        for field, var in (
            ("input_price_per_million", "BATCH_PIPELINES_INPUT_PRICE"),
            ("output_price_per_million", "BATCH_PIPELINES_OUTPUT_PRICE"),
        )
        if os.environ.get(var)
    }
    if _PROVIDER == LOCAL:
        # Poses as Moonshot (or BATCH_PIPELINES_LOCAL_PROFILE): requests are checked exactly as it checks them. Polled every
        # few seconds (real providers: every 30 s and more) so the UI shows progress.
        return BatchProviderResource(
            local_profile=_LOCAL_PROFILE,
            local_speed=os.environ.get("BATCH_PIPELINES_LOCAL_SPEED", "realistic"),
            local_seconds_per_request=float(os.environ.get("BATCH_PIPELINES_LOCAL_SECONDS_PER_REQUEST", 0)),
            poll_interval_seconds=2,
            max_poll_interval_seconds=5,
            **prices,
        )
    profile = PROFILES.get(_PROVIDER)
    key_var = profile.api_key_env if profile and profile.api_key_env else "BATCH_PIPELINES_API_KEY"
    if profile is not None and not os.environ.get(key_var):  # Gemini's key may be GOOGLE_API_KEY instead
        key_var = next((v for v in profile.api_key_fallback_envs if os.environ.get(v)), key_var)
    return BatchProviderResource(
        provider=_PROVIDER,
        base_url=os.environ.get("BATCH_PIPELINES_BASE_URL"),
        api_key=dg.EnvVar(key_var),
        **prices,
    )


def _model_from_env() -> str:
    model = os.environ.get("BATCH_PIPELINES_MODEL") or _DEFAULT_MODELS.get(_PROVIDER)
    if not model:
        raise ValueError(f"set BATCH_PIPELINES_MODEL: there is no default model for provider {_PROVIDER!r}")
    return model


#: One chat request per text, answered as a TextCategory (its JSON schema is the response format;
#: on Anthropic, the input schema of the tool the request forces).
request_spec = RequestSpec(
    model=_model_from_env(),
    **({"endpoint": MESSAGES, "body": {"max_tokens": 300}} if _ANTHROPIC else {}),
    **({"endpoint": GENERATE_CONTENT} if _GEMINI else {}),
    messages=[
        {
            "role": "system",
            "content": "You are a text classification expert. Classify the text into exactly one of: "
            + "/".join(CATEGORIES)
            + ". Give your confidence from 0 to 1 and one short sentence of reasoning.",
        },
        {"role": "user", "content": "Please classify the following text: {text}"},
    ],
    output_model=TextCategory,
    key_column="text_id",
)

classify_texts = build_batch_pipeline(
    "classify_texts",
    source=texts,
    spec=request_spec,
    io_manager_key="parquet_io_manager",
    group_name="classify_texts",
    sensor_minimum_interval_seconds=int(
        os.environ.get("BATCH_PIPELINES_SENSOR_INTERVAL", 5 if _PROVIDER == LOCAL else 60)
    ),
)

#: texts -> requests -> batch for some days; the sensor takes over from there.
submit_texts = dg.define_asset_job(
    "classify_texts_submit",
    selection=[texts, classify_texts.requests_asset, classify_texts.batch_asset],
    partitions_def=DAYS,
    description="Reads a day's texts and submits them as a batch; the sensor launches the results run.",
)

defs = dg.Definitions.merge(
    classify_texts.defs,
    dg.Definitions(
        assets=[texts],
        jobs=[submit_texts],
        # Each day at 01:00 UTC, submit the day that just ended (stopped until you turn it on).
        schedules=[dg.build_schedule_from_partitioned_job(submit_texts, hour_of_day=1)],
        resources={"batch_provider": _provider_from_env(), "parquet_io_manager": ParquetIOManager()},
        # The steps run one after the other and are light: one process per run, not one per step
        # (starting a Python process with pandas and Dagster costs more than the steps themselves).
        executor=dg.in_process_executor,
    ),
)
