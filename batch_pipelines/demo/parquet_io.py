"""A Parquet IO manager for the demo's DataFrames: one file per asset and partition.

Each value lands at ``<base_dir>/<asset key path>/<partition>.parquet`` (``<base_dir>/<asset
key path>.parquet`` when unpartitioned), so the results are plain files any tool opens::

    pandas.read_parquet(".dagster_home/storage/classify_texts_results/2026-03-02.parquet")
    duckdb.sql("select category, count(*) from '.dagster_home/storage/classify_texts_results/*.parquet' group by 1")

An asset reading several partitions of an upstream asset receives a ``{partition: DataFrame}``
mapping (Dagster's convention for file IO managers).
"""

from __future__ import annotations

import dagster as dg
import pandas as pd
from pydantic import Field
from upath import UPath

__all__ = ["ParquetIOManager"]


class ParquetIOManager(dg.ConfigurableIOManagerFactory):
    """Stores pandas DataFrames as Parquet files under ``base_dir`` (default: the instance's storage)."""

    base_dir: str | None = Field(
        default=None, description="Directory of the Parquet files; unset: $DAGSTER_HOME/storage."
    )

    def create_io_manager(self, context: dg.InitResourceContext) -> _ParquetFiles:
        if self.base_dir is None and context.instance is None:
            raise dg.DagsterInvariantViolationError("ParquetIOManager needs base_dir outside a Dagster instance")
        base_dir = self.base_dir or context.instance.storage_directory()  # type: ignore[union-attr]
        return _ParquetFiles(base_path=UPath(base_dir))


class _ParquetFiles(dg.UPathIOManager):
    extension = ".parquet"

    def dump_to_path(self, context: dg.OutputContext, obj: object, path: UPath) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"ParquetIOManager stores pandas DataFrames; asset {context.asset_key.to_user_string()} "
                f"returned {type(obj).__name__}"
            )
        # Written beside the target then renamed, so a reader never sees half a file.
        partial = path.with_name(path.name + ".partial")
        obj.to_parquet(partial, index=False)
        partial.rename(path)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        return pd.read_parquet(path)
