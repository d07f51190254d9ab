"""build_request_files: a DataFrame into validated, sharded JSONL request files and their manifest.

The build checks the input as a whole, names every row by its custom_id, turns rows into lines a
chunk at a time (:mod:`.template_lines` or :mod:`.function_lines`), drops the lines no file could
hold, and hands the rest to the :class:`ShardWriter`; memory beyond the DataFrame stays around one
chunk of lines. Row problems end in one error (``fail``) or in the manifest (``quarantine``).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipelines.profiles import EMBEDDINGS, ProviderProfile, model_problem
from batch_pipelines.requests.custom_ids import CustomIds, row_custom_ids
from batch_pipelines.requests.function_lines import FunctionLines
from batch_pipelines.requests.manifest import IDS_NAME, MANIFEST_NAME, RequestManifest
from batch_pipelines.requests.media import MediaUploader
from batch_pipelines.requests.problems import Problem, RequestValidationError, row_problem
from batch_pipelines.requests.row_report import Policy, RowReport
from batch_pipelines.requests.fingerprints import line_fingerprints
from batch_pipelines.requests.send_once import SendOnce
from batch_pipelines.requests.previous_build import read_values, unchanged_fingerprints, write_values
from batch_pipelines.requests.source_digest import source_digest, spec_digest
from batch_pipelines.requests.shards import SHARD_GLOB, Chunk, HeldLines, Limits, ShardWriter, drop_lines
from batch_pipelines.requests.spec import RequestSpec
from batch_pipelines.requests.template_lines import TemplateLines
from batch_pipelines.requests.values import CellError, dumps, is_missing, key_text, not_json, plain_key

#: Fraction of the profile's byte limit left unused. Providers write "100 MB" without saying
#: whether they mean 10**8 or 100 * 2**20 bytes (4.6 % apart); 5 % covers that and a little more.
SIZE_MARGIN = 0.05

# Rows become lines a chunk at a time: ~_CHUNK_BYTES of lines keeps memory flat whatever the row
# width (text or inline images) while amortizing Arrow's per-call cost. The first chunk is small
# and measures the line size the following ones are cut to.
_CHUNK_BYTES = 4 * 1024 * 1024
_FIRST_CHUNK_ROWS = 64


def build_request_files(
    df: pd.DataFrame,
    spec: RequestSpec,
    out_dir: Path,
    *,
    profile: ProviderProfile,
    policy: Policy = "fail",
    attempt: int = 1,
    upload_media: MediaUploader | None = None,
    media_refs: MutableMapping[str, str] | None = None,
    size_margin: float = SIZE_MARGIN,
    max_requests_per_shard: int | None = None,
    send_once: SendOnce | None = None,
) -> RequestManifest:
    """Validate ``df`` against ``spec`` and ``profile`` and write its requests as JSONL shards.

    Writes ``shard-00000.jsonl``..., ``ids.parquet`` and ``manifest.json`` into ``out_dir`` (give
    each attempt its own folder: files of an earlier build there are replaced). No shard holds more
    than the profile's byte limit less ``size_margin`` (newlines counted), its request limit,
    ``max_requests_per_shard``, or (embeddings) its input limit. The same rows and spec always give
    byte-identical files.

    ``policy="fail"`` raises one :class:`RequestValidationError` for all rows at fault and leaves no
    request file behind; ``"quarantine"`` leaves those rows out and lists them in
    ``manifest.rejected``. Problems with the input as a whole (an endpoint the provider lacks, a
    missing column, a forbidden parameter, an empty table) raise under either policy.

    ``upload_media`` is called once per distinct media content that travels as a file (see
    :class:`~batch_pipelines.requests.MediaPart`), never once the build is bound to fail. ``media_refs`` (content sha256 ->
    reference, e.g. a previous manifest's) spares uploads already done and is updated in place, so
    a caller's dict keeps what was uploaded even when the build then fails. ``attempt`` numbers
    retries; custom_ids stay those of the rows' keys.

    With ``send_once`` (:class:`~batch_pipelines.requests.send_once.SendOnce`) a row whose request
    already has an answer, or repeats one sent earlier in the build, is held back: in the id map
    (shard ``HELD_BACK``), in no shard, counted in ``manifest.held_back``.
    """
    manifest = _build(
        df, spec, Path(out_dir), profile=profile, policy=policy, attempt=attempt, upload_media=upload_media, media_refs=media_refs,
        size_margin=size_margin, max_requests_per_shard=max_requests_per_shard, send_once=send_once,
    )  # fmt: skip
    assert manifest is not None
    return manifest


def check_request_rows(
    df: pd.DataFrame, spec: RequestSpec, *, profile: ProviderProfile, policy: Policy = "fail", max_requests_per_shard: int | None = None
) -> None:
    """Raise the :class:`RequestValidationError` :func:`build_request_files` would raise, writing nothing.

    For a caller that must know several tables are good before it writes any (a run over several
    partitions): the same checks, line by line, without a file, a hash or an id map.
    """
    _build(df, spec, None, profile=profile, policy=policy, max_requests_per_shard=max_requests_per_shard)


def _build(
    df: pd.DataFrame,
    spec: RequestSpec,
    out_dir: Path | None,
    *,
    profile: ProviderProfile,
    policy: Policy = "fail",
    attempt: int = 1,
    upload_media: MediaUploader | None = None,
    media_refs: MutableMapping[str, str] | None = None,
    size_margin: float = SIZE_MARGIN,
    max_requests_per_shard: int | None = None,
    send_once: SendOnce | None = None,
) -> RequestManifest | None:
    """The build; with no ``out_dir`` a check that writes nothing and returns None (or raises)."""
    if policy not in get_args(Policy):
        raise ValueError(f"policy must be 'fail' or 'quarantine', not {policy!r}")
    if not 0 <= size_margin < 1:
        raise ValueError(f"size_margin must be in [0, 1), not {size_margin}")
    context = f"{profile.name} {spec.endpoint}"
    _check_input(df, spec, profile, upload_media, context)
    counts = [n for n in (profile.max_requests_per_file, max_requests_per_shard) if n is not None]
    limits = Limits(
        bytes=int(profile.max_file_bytes * (1 - size_margin)),
        requests=min(counts) if counts else None,
        inputs=profile.max_embedding_inputs if spec.endpoint == EMBEDDINGS else None,
    )
    values = read_values(df, spec) if send_once is not None and out_dir is not None else None
    prior = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        prior = unchanged_fingerprints(values, spec, profile, out_dir)  # before the previous build's files go
        for stale in [*out_dir.glob(SHARD_GLOB), out_dir / IDS_NAME, out_dir / MANIFEST_NAME]:
            stale.unlink(missing_ok=True)

    if spec.key_column is None:
        keys, unique = pd.Series(df.index), df.index.is_unique
    else:
        keys, unique = df[spec.key_column].reset_index(drop=True), None
    ids, problems = row_custom_ids(keys, unique=unique)
    for column in spec.columns:
        missing = np.flatnonzero(df[column].isna().to_numpy())
        problems += [row_problem("missing_value", f"{column!r} is missing", int(r), keys.iloc[r], column) for r in missing]
    report = RowReport(keys, problems, policy)
    refs = media_refs if media_refs is not None else {}
    lines: TemplateLines | FunctionLines
    if spec.build_body is None:
        lines = TemplateLines(df, spec, report, refs, upload_media)
    else:
        lines = FunctionLines(df, spec, profile, report)
    dry = out_dir is None
    folder = out_dir or Path()
    writer = ShardWriter(folder, limits, _key_array(keys), folder / IDS_NAME, dry=dry or report.failing)
    try:
        start, size, line_bytes, line_count, held_back = 0, _FIRST_CHUNK_ROWS, 0, 0, 0
        while start < len(df):
            stop = min(start + size, len(df))
            skipped = None
            if prior is not None and send_once is not None and not report.failing:
                skipped = _unchanged_and_answered(start, stop, prior, send_once, ids)
            skip = None
            if skipped is not None:
                skip = np.zeros(stop - start, dtype=bool)
                skip[skipped.rows - start] = True
            chunk = _within_limits(lines.chunk(start, stop, ids, skip=skip), limits, report)
            if report.failing:
                writer.abort()  # and go on checking, so the error counts every problem
            line_count += len(chunk.ends)
            line_bytes += int(chunk.ends[-1]) if len(chunk.ends) else 0
            held = None
            if send_once is not None and not report.failing and len(chunk.ends):
                chunk, held = _hold_back(chunk, send_once, prior)
            held = _both(skipped, held)
            held_back += len(held.rows) if held is not None else 0
            writer.write(chunk, held)
            size = max(1, _CHUNK_BYTES * line_count // line_bytes) if line_bytes else size
            start = stop
        written = writer.close()
    except BaseException:
        writer.abort()
        raise
    if report.failing:
        raise RequestValidationError(report.problems, total_rows=len(df), context=context)
    if out_dir is None:
        return None
    shards = [s.model_copy(update={"attempt": attempt}) for s in written]
    manifest = RequestManifest(
        provider=profile.name,
        endpoint=spec.endpoint,
        model=spec.model,
        attempt=attempt,
        rows=len(df),
        requests=sum(s.rows for s in shards),
        shards=shards,
        rejected=report.rejected(ids),
        held_back=held_back,
        source_digest=source_digest(df, spec, profile),
        spec_digest=spec_digest(spec, profile),
        ids_path=writer.ids_path if writer.wrote_ids else None,
        media_refs=dict(refs),
    )
    if manifest.requests + len(manifest.rejected) + held_back != len(df):
        raise AssertionError(f"{manifest.requests} sent + {len(manifest.rejected)} rejected + {held_back} held back != {len(df)} rows")
    write_values(values, out_dir)
    manifest.write(out_dir / MANIFEST_NAME)
    return manifest


def _check_input(
    df: pd.DataFrame, spec: RequestSpec, profile: ProviderProfile, upload_media: MediaUploader | None, context: str
) -> None:
    """Problems with the input as a whole, raised whatever the policy."""
    problems: list[Problem] = []
    if len(df) == 0:
        problems.append(Problem(code="empty_input", message="the DataFrame has no rows"))
    if spec.endpoint not in profile.endpoints:
        message = f"{profile.name} does not serve {spec.endpoint} (only {', '.join(profile.endpoints)})"
        problems.append(Problem(code="endpoint_not_allowed", message=message))
    for column in [spec.key_column, *spec.columns]:
        if column is not None and column not in df.columns:
            message = f"column {column!r} is not in the DataFrame (columns: {list(df.columns)[:20]})"
            problems.append(Problem(code="missing_column", message=message, column=column))
    if (unsupported := model_problem(profile, spec.model)) is not None:
        problems.append(Problem(code="model_not_supported", message=unsupported))
    forbidden = sorted(profile.forbidden_for(spec.model) & set(spec.body))
    if forbidden:
        message = f"{profile.name} rejects {forbidden} for model {spec.model!r}: remove them from body"
        problems.append(Problem(code="forbidden_param", message=message))
    try:
        dumps(spec.body)
        where = not_json(spec.body, "body")
        if where:
            problems.append(Problem(code="unserializable_body", message=where))
    except CellError as exc:
        problems.append(Problem(code="unserializable_body", message=f"body: {exc}"))
    if upload_media is None and any(p.transport != "data_url" for p in spec.media):
        problems.append(Problem(code="missing_uploader", message="media parts may travel as files: pass upload_media"))
    if problems:
        raise RequestValidationError(problems, total_rows=len(df), context=context)


def _within_limits(chunk: Chunk, limits: Limits, report: RowReport) -> Chunk:
    """Drop the lines that alone exceed a file's limits, reporting them as too_large."""
    sizes = np.diff(chunk.ends, prepend=0)
    big = sizes > limits.bytes
    many = chunk.weights > limits.inputs if (limits.inputs is not None and chunk.weights is not None) else np.zeros_like(big)
    if not (big.any() or many.any()):
        return chunk
    for i in np.flatnonzero(big | many):
        if big[i]:
            what = f"{sizes[i]} bytes, over the {limits.bytes}-byte budget of a file"
        else:
            what = f"{chunk.weights[i]} embedding inputs, over {limits.inputs} per file"  # type: ignore[index]
        report.row("too_large", f"request is {what}", int(chunk.rows[i]))
    return drop_lines(chunk, big | many)


def _unchanged_and_answered(start: int, stop: int, prior: pa.Array, send_once: SendOnce, ids: CustomIds) -> HeldLines | None:
    """Rows ``start..stop`` unchanged since the previous build whose request has an answer: held
    back without making their lines (None: none)."""
    known = prior.slice(start, stop - start)
    rows = np.flatnonzero(known.is_valid().to_numpy(zero_copy_only=False))
    if not len(rows) or send_once.answered is None:
        return None
    prints = known.take(pa.array(rows))
    answered = np.asarray(send_once.answered(prints), dtype=bool)
    if not answered.any():
        return None
    rows = rows[answered]
    return HeldLines(rows + start, ids.slice(start, stop - start).take(pa.array(rows)), prints.filter(pa.array(answered)))


def _both(first: HeldLines | None, second: HeldLines | None) -> HeldLines | None:
    if first is None or second is None:
        return first if second is None else second
    return HeldLines(
        np.concatenate([first.rows, second.rows]),
        pa.concat_arrays([first.ids.cast(pa.string()), second.ids.cast(pa.string())]),
        pa.concat_arrays([first.fingerprints.cast(pa.string()), second.fingerprints.cast(pa.string())]),
    )


def _hold_back(chunk: Chunk, send_once: SendOnce, prior: pa.Array | None) -> tuple[Chunk, HeldLines | None]:
    """The chunk's lines to send, and those held back (None: none).

    ``prior`` (per source row) spares hashing the lines of rows unchanged since the previous build.
    """
    known = prior.take(pa.array(chunk.rows)) if prior is not None else None
    if known is None or known.null_count == len(known):
        fingerprints = line_fingerprints(chunk.data, chunk.ends, chunk.ids)
    else:
        fresh = np.flatnonzero(known.is_null().to_numpy(zero_copy_only=False))
        if len(fresh):
            hashed = line_fingerprints(chunk.data, chunk.ends, chunk.ids, only=fresh)
            fingerprints = known.combine_chunks() if isinstance(known, pa.ChunkedArray) else known
            fingerprints = pc.replace_with_mask(fingerprints, pa.array(~known.is_valid().to_numpy(zero_copy_only=False)), hashed)
        else:
            fingerprints = known
    chunk = chunk._replace(fingerprints=fingerprints)
    held = send_once.hold_back(fingerprints)
    if not held.any():
        return chunk, None
    mask = pa.array(held)
    return drop_lines(chunk, held), HeldLines(chunk.rows[held], chunk.ids.filter(mask), fingerprints.filter(mask))


def _key_array(keys: pd.Series) -> pa.Array:
    """Keys for the id map: in their own type where Arrow has one, else as text (a lone surrogate escaped)."""
    try:
        array = pa.array(keys, from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError, OverflowError, UnicodeEncodeError):
        array = pa.array([None if is_missing(k) else plain_key(key_text(k)) for k in keys], pa.string())
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
