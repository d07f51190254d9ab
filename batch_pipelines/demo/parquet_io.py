"""A Parquet IO manager for the demo's DataFrames: one file per asset and partition.

Each value lands at ``<base_dir>/<asset key path>/<partition>.parquet`` (``<base_dir>/<asset
key path>.parquet`` when unpartitioned), so the results are plain files any tool opens::

    pandas.read_parquet(".dagster_home/storage/classify_texts_results/2026-03-02.parquet")
    duckdb.sql("select category, count(*) from '.dagster_home/storage/classify_texts_results/*.parquet' group by 1")

An asset reading several partitions of an upstream asset receives a ``{partition: DataFrame}``
mapping (Dagster's convention for file IO managers); an asset materializing several partitions in
one run (a backfill's ``multi_run`` policy) returns such a mapping, one file written per partition.
"""

from __future__ import annotations

from collections.abc import Mapping

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

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if not (context.has_asset_partitions and len(context.asset_partition_keys) > 1):
            super().handle_output(context, obj)
            return
        paths = self._get_paths_for_partitions(context)
        if not isinstance(obj, Mapping) or set(obj) != set(paths):
            raise TypeError(
                f"ParquetIOManager: asset {context.asset_key.to_user_string()} materializes partitions {sorted(paths)} "
                f"in one run: return a {{partition: DataFrame}} mapping of exactly those, not {type(obj).__name__}"
            )
        for partition, path in paths.items():
            self.make_directory(path.parent)
            self.dump_to_path(context, obj[partition], path)

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
