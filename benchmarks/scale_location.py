"""The code location ``bench_scale.py`` starts ``dagster-daemon`` and ``dagster-webserver`` on.

A daily-partitioned source of generated texts (``BENCH_ROWS`` rows a day, the same rows for the
same day every time) feeding one batch pipeline on the OpenAI protocol of the local service at
``BENCH_BASE_URL``. Everything a run keeps lives in the bucket of ``BENCH_STORAGE``: the plugin's
files (``storage_dir``) and the asset values (Parquet, one file a partition); run workers share
nothing else but the PostgreSQL instance. The S3 server's address is ``BENCH_S3_ENDPOINT`` (empty:
``BENCH_STORAGE`` is a local folder); its dummy credentials come from the environment
(``AWS_ACCESS_KEY_ID``...), where s3fs finds them.
"""


import os
from collections.abc import Mapping

import dagster as dg
import numpy as np
import pandas as pd
from upath import UPath

from batch_pipelines import BatchProviderResource, RequestSpec, build_batch_pipeline

PIPELINE = "scale"
ROWS = int(os.environ["BENCH_ROWS"])
PER_RUN = int(os.environ["BENCH_PER_RUN"])
STORAGE = os.environ["BENCH_STORAGE"]
STORAGE_OPTIONS = {"endpoint_url": os.environ["BENCH_S3_ENDPOINT"]} if os.environ.get("BENCH_S3_ENDPOINT") else {}
DAYS = dg.DailyPartitionsDefinition(start_date=os.environ["BENCH_START_DATE"], end_date=os.environ["BENCH_END_DATE"])
_WORDS = np.array("the a quick slow report order delivery late broken great refund price support app crash screen".split())


class ParquetOnStorage(dg.UPathIOManager):
    """DataFrames as Parquet files under the bucket; a run over several days writes one per day."""

    extension = ".parquet"

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if not (context.has_asset_partitions and len(context.asset_partition_keys) > 1):
            return super().handle_output(context, obj)
        assert isinstance(obj, Mapping), f"a run over several days returns {{day: DataFrame}}, not {type(obj).__name__}"
        for partition, path in self._get_paths_for_partitions(context).items():
            self.make_directory(path.parent)
            self.dump_to_path(context, obj[partition], path)

    def dump_to_path(self, context: dg.OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        with path.open("wb") as fh:
            obj.to_parquet(fh, index=False)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        with path.open("rb") as fh:
            return pd.read_parquet(fh)


def day_texts(day: str) -> pd.DataFrame:
    """``ROWS`` short texts for ``day``: the same ones for the same day."""
    rng = np.random.default_rng(int(day.replace("-", "")))
    picks = rng.integers(0, len(_WORDS), size=(ROWS, 8))
    texts = [" ".join(words) for words in _WORDS[picks]]
    return pd.DataFrame({"text_id": [f"{day}-{i}" for i in range(ROWS)], "text": texts})


@dg.asset(
    partitions_def=DAYS,
    io_manager_key="values",
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=PER_RUN),
)
def texts(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    by_day = {day: day_texts(day) for day in context.partition_keys}
    return dg.MaterializeResult(value=by_day if len(by_day) > 1 else next(iter(by_day.values())))


scale = build_batch_pipeline(
    PIPELINE,
    source=texts,
    spec=RequestSpec(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Classify as positive, negative or neutral: {text}"}],
        key_column="text_id",
        body={"max_tokens": 20},
    ),
    io_manager_key="values",
    max_partitions_per_run=PER_RUN,
    sensor_minimum_interval_seconds=2,
)

defs = dg.Definitions.merge(
    scale.defs,
    dg.Definitions(
        assets=[texts],
        resources={
            "batch_provider": BatchProviderResource(
                provider="openai",
                base_url=os.environ["BENCH_BASE_URL"],
                api_key=dg.EnvVar("OPENAI_API_KEY"),
                storage_dir=f"{STORAGE}/batch_pipelines",
                storage_options=STORAGE_OPTIONS,
                poll_interval_seconds=1,
                max_poll_interval_seconds=2,
            ),
            "values": ParquetOnStorage(base_path=UPath(f"{STORAGE}/values", **STORAGE_OPTIONS)),
        },
        executor=dg.in_process_executor,
    ),
)
