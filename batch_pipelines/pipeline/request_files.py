"""``<name>_requests``: each partition's rows as validated, sharded request files.

A run over several partitions (a backfill's ``multi_run`` policy) checks every partition's rows
first, then builds each on its own, with its own metadata. A partition whose round is in flight
and whose rebuilt shards differ from the ones sent has those batches cancelled, and what they
answered kept (:mod:`.superseded`): the rows they answered are not sent again. The files are
written under the partition's lock, so a submit never sees them half rewritten.
"""

# No ``from __future__ import annotations``: Dagster reads annotations of the functions it wraps.
from collections.abc import Sequence
from typing import Any

import dagster as dg
import pandas as pd

from batch_pipelines.pipeline.ledger import SOURCE_DIGEST_KEY, load_round
from batch_pipelines.pipeline.metadata import first_requests, rejected_preview
from batch_pipelines.pipeline.resource import BatchProviderResource
from batch_pipelines.pipeline.run_partitions import load_source, run_partitions
from batch_pipelines.pipeline.runtime import Context, PipelineRuntime
from batch_pipelines.pipeline.superseded import cancel_superseded_round, sent_id_maps
from batch_pipelines.requests import (
    FINGERPRINT_COLUMN,
    IDS_NAME,
    MANIFEST_NAME,
    VALUES_NAME,
    RequestManifest,
    RequestValidationError,
    SendOnce,
    build_request_files,
    check_request_rows,
    frame_digest,
)
from batch_pipelines.storage import WorkingCopy
from batch_pipelines.submission import PartitionFolder

__all__ = ["build_requests"]


def build_requests(rt: PipelineRuntime, context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Each partition of the run's request files, with its own metadata.

    A run over several partitions first checks every partition's rows: one with rows that
    cannot become requests fails the run, naming each such partition, before any partition's
    files are rewritten (or its superseded batches cancelled), so no partition of the run is
    submitted with part of the others.
    """
    partitions = run_partitions(context)
    if len(partitions) > 1:
        _check_partitions(rt, context, partitions)
    # One copy of the reuse store's keys for the run's partitions: each lookup fetches only what is new since.
    with rt.files(context, rt.resource(context)) as lookups:
        for partition in partitions:
            metadata = _build_partition(rt, context, partition, load_source(context, rt.source_key, partition), lookups)
            context.add_asset_metadata(metadata, **({"partition_key": partition} if partition is not None else {}))
    return dg.MaterializeResult()


def _check_partitions(rt: PipelineRuntime, context: dg.AssetExecutionContext, partitions: Sequence[str | None]) -> None:
    """Refuse the run if any partition's rows cannot become requests (checked, nothing written)."""
    resource = rt.resource(context)
    refused: dict[str, RequestValidationError] = {}
    for partition in partitions:
        source = load_source(context, rt.source_key, partition)
        try:
            check_request_rows(
                source, rt.spec, profile=resource.profile, policy=rt.options.policy,
                max_requests_per_shard=rt.options.max_requests_per_shard,
            )  # fmt: skip
        except RequestValidationError as exc:
            refused[str(partition)] = exc
    if refused:
        details = "\n".join(f"partition {p}: {exc}" for p, exc in refused.items())
        raise dg.Failure(
            description=(
                f"{len(refused)} of {len(partitions)} partitions of this run have rows that cannot become requests; "
                f"no request file was written and nothing submitted for any partition of the run "
                f"(fix the rows, or policy='quarantine' to send the valid ones):\n{details}"
            ),
            metadata={
                "refused_partitions": dg.MetadataValue.json(sorted(refused)),
                "problems": dg.MetadataValue.json({p: exc.counts for p, exc in refused.items()}),
            },
            allow_retries=False,
        )


def _build_partition(
    rt: PipelineRuntime, context: dg.AssetExecutionContext, partition: str | None, source: pd.DataFrame, lookups: WorkingCopy
) -> dict[str, Any]:
    """One partition's request files (the reuse store read through ``lookups``); the metadata of its materialization."""
    resource = rt.resource(context)
    with rt.files(context, resource) as copy:
        folder = rt.folder(copy, partition)
        send_once = rt.send_once(context, lookups)
        current = load_round(context.instance, rt.batch_key, rt.results_key, partition) if rt.options.cancel_superseded else None
        # The id maps the round's batches were sent with: the rebuild overwrites the first attempt's.
        sent_with = sent_id_maps(rt, copy, folder, current) if current is not None and send_once is not None else {}
        manifest = _write_requests(rt, context, source, resource, copy, folder, partition, send_once)
        fingerprints = [s.fingerprint(resource.provider, manifest.endpoint) for s in manifest.shards]
        cancelled, kept = cancel_superseded_round(rt, context, copy, folder, current, fingerprints, sent_with) if current is not None else ([], set())
        if kept and kept & set(manifest.read_ids()[FINGERPRINT_COLUMN].dropna()):
            # What the superseded batches answered is in the reuse store now: those rows are not sent again.
            manifest = _write_requests(rt, context, source, resource, copy, folder, partition, rt.send_once(context, lookups))
            fingerprints = [s.fingerprint(resource.provider, manifest.endpoint) for s in manifest.shards]
        metadata: dict[str, Any] = {
            "rows": manifest.rows,
            "requests": manifest.requests,
            "rejected_rows": len(manifest.rejected),
            "rows_reused": manifest.held_back,
            "reuse": "on" if send_once is not None else ("off for this run" if rt.options.reuse else "off"),
            "shards": len(manifest.shards),
            "bytes": sum(s.bytes for s in manifest.shards),
            "fingerprints": dg.MetadataValue.json(fingerprints),
            "manifest": dg.MetadataValue.path(copy.url(folder.attempt(1) / MANIFEST_NAME)),
            "preview": dg.MetadataValue.json(first_requests(manifest, 3)),
            "dagster/row_count": manifest.requests,
            SOURCE_DIGEST_KEY: frame_digest(source) or "",
        }
        if manifest.rejected:
            metadata["rejected"] = dg.MetadataValue.md(rejected_preview(manifest.rejected))
        metadata.update(rt.budget(resource).metadata(manifest))
        if cancelled:
            metadata["superseded_batches"] = dg.MetadataValue.json(cancelled)
        if kept:
            metadata["answers_kept_from_superseded"] = len(kept)
        return metadata


def _write_requests(
    rt: PipelineRuntime,
    context: Context,
    source: pd.DataFrame,
    resource: BatchProviderResource,
    copy: WorkingCopy,
    folder: PartitionFolder,
    partition: str | None,
    send_once: SendOnce | None,
) -> RequestManifest:
    """The first attempt's request files, written and stored under the partition's lock (a submit never
    sees them half rewritten). What the previous build kept is pulled first (its unchanged rows' fingerprints)."""
    out_dir = folder.attempt(1)
    try:
        with rt.lock(context, partition):
            copy.pull(out_dir, names={MANIFEST_NAME, IDS_NAME, VALUES_NAME})
            manifest = build_request_files(
                source,
                rt.spec,
                out_dir,
                profile=resource.profile,
                policy=rt.options.policy,
                attempt=1,
                max_requests_per_shard=rt.options.max_requests_per_shard,
                send_once=send_once,
            )
            copy.push(out_dir, exact=True)
            return manifest
    except RequestValidationError as exc:
        raise dg.Failure(
            description=str(exc),
            metadata={"problems": dg.MetadataValue.json(exc.counts), "rows": exc.total_rows},
            allow_retries=False,
        ) from None
