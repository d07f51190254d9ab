"""Request files: from DataFrame rows to validated, sharded JSONL.

A user describes once, in a :class:`RequestSpec`, how a row becomes a request body: a template
(chat messages or an input text holding ``{column}`` placeholders, plus fixed body parameters) or
a Python function of the row. :func:`build_request_files` checks every row against the provider's
profile, writes the request lines into shards that respect the profile's limits, and returns a
:class:`RequestManifest`: the shards with size and sha256, the rejected rows, the custom_id map.

Rows are named by a custom_id derived from their key (:func:`custom_ids`), so results join back to
the source whatever order the provider returns them in.

It is fast because a template is compiled once into the constant JSON of a line and rows are
poured into its holes a chunk at a time by Arrow, with vectorized JSON escaping; memory beyond the
DataFrame stays around one chunk of lines.

Modules, each importing only those listed before it:

- ``values``: JSON serialization, missing values, key text
- ``json_text``: Arrow text columns, vectorized JSON escaping, line buffers
- ``media``: :class:`MediaPart` cells into data URLs or uploaded references
- ``templates``: the ``{column}`` template language
- ``schema``: :func:`strict_json_schema` for structured output
- ``spec``: :class:`RequestSpec`
- ``problems``: :class:`Problem`, :class:`RejectedRow`, :class:`RequestValidationError`
- ``custom_ids``: a row's custom_id from its key
- ``row_report``: the row problems one build has found
- ``fingerprints``: a request line's content fingerprint
- ``send_once``: which lines a build holds back (answered already, or repeated)
- ``source_digest``: whether a source is still the one request files were built from
- ``shards``: :class:`Shard` files within limits, and the id map
- ``manifest``: :class:`RequestManifest`
- ``template_lines``, ``function_lines``: rows into lines, per kind of spec
- ``build``: :func:`build_request_files`, :func:`check_request_rows`
"""

from batch_pipelines.requests.estimate import BYTES_PER_TOKEN, RequestEstimate, estimate_requests
from batch_pipelines.requests.fingerprints import FINGERPRINT_COLUMN, fingerprint_keys
from batch_pipelines.requests.build import SIZE_MARGIN, build_request_files, check_request_rows
from batch_pipelines.requests.custom_ids import custom_ids
from batch_pipelines.requests.manifest import IDS_NAME, MANIFEST_NAME, RequestManifest
from batch_pipelines.requests.media import MediaFile, MediaPart, MediaUploader
from batch_pipelines.requests.previous_build import VALUES_NAME
from batch_pipelines.requests.problems import Problem, ProblemCode, RejectedRow, RequestValidationError
from batch_pipelines.requests.schema import strict_json_schema
from batch_pipelines.requests.send_once import HELD_BACK, AnswerLookup, SendOnce
from batch_pipelines.requests.source_digest import frame_digest, source_digest
from batch_pipelines.requests.shards import Shard
from batch_pipelines.requests.spec import RequestSpec

__all__ = [
    "HELD_BACK",
    "AnswerLookup",
    "SendOnce",
    "BYTES_PER_TOKEN",
    "FINGERPRINT_COLUMN",
    "RequestEstimate",
    "estimate_requests",
    "IDS_NAME",
    "MANIFEST_NAME",
    "SIZE_MARGIN",
    "VALUES_NAME",
    "MediaFile",
    "MediaPart",
    "MediaUploader",
    "Problem",
    "ProblemCode",
    "RejectedRow",
    "RequestManifest",
    "RequestSpec",
    "RequestValidationError",
    "Shard",
    "build_request_files",
    "check_request_rows",
    "custom_ids",
    "fingerprint_keys",
    "frame_digest",
    "source_digest",
    "strict_json_schema",
]
