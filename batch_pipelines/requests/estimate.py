"""What a set of request files will cost in tokens, known before anything is uploaded.

Input tokens are estimated from the bytes sent (about four bytes a token, the JSON around the
text included, so the estimate leans high); output tokens are bounded only where every request
caps them (``max_tokens``, ``max_completion_tokens`` or ``max_output_tokens`` in the body).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from batch_pipelines.requests.manifest import RequestManifest
from batch_pipelines.requests.spec import RequestSpec

__all__ = ["BYTES_PER_TOKEN", "RequestEstimate", "estimate_requests"]

#: Bytes of a request line per input token, for the estimate.
BYTES_PER_TOKEN = 4
_OUTPUT_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


class RequestEstimate(BaseModel):
    """Requests to send, and the tokens they will take."""

    model_config = ConfigDict(frozen=True)

    requests: int
    input_tokens: int
    #: None when a request does not cap its answer: the cost then has no upper bound.
    max_output_tokens: int | None


def estimate_requests(manifest: RequestManifest, spec: RequestSpec) -> RequestEstimate:
    """The estimate for ``manifest``'s request files, built from ``spec``."""
    sent = sum(s.bytes for s in manifest.shards)
    cap = next((spec.body[k] for k in _OUTPUT_CAPS if isinstance(spec.body.get(k), int)), None)
    if spec.build_body is not None:
        cap = None  # a function may set another cap per row, or none
    return RequestEstimate(
        requests=manifest.requests,
        input_tokens=math.ceil(sent / BYTES_PER_TOKEN),
        max_output_tokens=None if cap is None else cap * manifest.requests,
    )
