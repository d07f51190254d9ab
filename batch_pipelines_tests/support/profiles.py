"""The provider shapes the end-to-end tests run the pipeline on: what changes from one to the other.

The pipeline, the sensor and the resource are the same on every provider; a profile says only
how the local service poses (``openai``, ``anthropic`` or ``gemini``), which ``provider`` the
resource is set to, the request spec (Anthropic takes ``/v1/messages`` with ``max_tokens``, Gemini
GenerateContentRequests), the HTTP routes the client calls (to aim a fault at one of them) and
where a batch's tags are read (its metadata, Gemini's displayName, or the pipeline's records).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batch_pipelines import RequestSpec
from batch_pipelines.profiles import GENERATE_CONTENT, MESSAGES
from batch_pipelines.providers.gemini_wire import tags_of
from batch_pipelines_tests.support.driver import SPEC

__all__ = ["ANTHROPIC", "GEMINI", "OPENAI", "PROFILES", "Profile", "Routes"]


@dataclass(frozen=True)
class Routes:
    """The service routes the pipeline's client calls, as fnmatch patterns on the path."""

    create: str
    list: str
    retrieve: str
    results: str
    #: Routes of a file step (uploads, deletes); none where requests are sent inline.
    files: tuple[tuple[str, str], ...] = ()

    def every(self) -> list[tuple[str, str]]:
        """(method, route) of every call the pipeline makes."""
        calls = [("POST", self.create), ("GET", self.list), ("GET", self.retrieve), ("GET", self.results)]
        return [*calls, *self.files]


@dataclass(frozen=True)
class Profile:
    name: str
    #: The resource's ``provider`` setting.
    provider: str
    spec: RequestSpec
    routes: Routes
    #: Whether batches carry metadata (and so per-batch fault plans as batch tags).
    batch_metadata: bool
    resource: dict[str, Any] = field(default_factory=dict)
    #: The tags of a service batch (its engine dict) where they are not its metadata but still at
    #: the provider (Gemini: the displayName); None: its metadata, or the pipeline's records.
    tags: Callable[[Mapping[str, Any]], dict[str, str]] | None = None
    #: The service's id of a batch id the pipeline holds (Gemini's drop the engine's ``batch_``,
    #: Anthropic's show it as ``msgbatch_``).
    service_batch_id: Callable[[str], str] = lambda batch_id: batch_id

    @property
    def service_profile(self) -> str:
        """What the local service poses as."""
        return self.name


OPENAI = Profile(
    name="openai",
    provider="openai",
    spec=SPEC,
    routes=Routes(
        create="/v1/batches",
        list="/v1/batches",
        retrieve="/v1/batches/batch_*",
        results="/v1/files/*/content",
        files=(("POST", "/v1/files"), ("DELETE", "/v1/files/*")),
    ),
    batch_metadata=True,
)

ANTHROPIC = Profile(
    name="anthropic",
    provider="anthropic",
    spec=SPEC.model_copy(update={"endpoint": MESSAGES, "model": "claude-haiku-4-5", "body": {"max_tokens": 200}}),
    routes=Routes(
        create="/v1/messages/batches",
        list="/v1/messages/batches",
        retrieve="/v1/messages/batches/msgbatch_*",
        results="/v1/messages/batches/*/results",
    ),
    batch_metadata=False,
    # The service shows the engine's batch_<hex> as msgbatch_<hex>.
    service_batch_id=lambda batch_id: "batch_" + batch_id.removeprefix("msgbatch_"),
)

GEMINI = Profile(
    name="gemini",
    provider="gemini",
    spec=SPEC.model_copy(
        update={"endpoint": GENERATE_CONTENT, "model": "gemini-2.5-flash", "body": {"generationConfig": {"maxOutputTokens": 200}}}
    ),
    routes=Routes(
        create="/v1/models/*",
        list="/v1/batches",
        retrieve="/v1/batches/*",
        # The shards are small: they go inline, and their answers come with the batch itself.
        results="/v1/batches/*",
    ),
    # No metadata to carry a per-batch fault plan; the tags travel in the displayName.
    batch_metadata=False,
    tags=lambda batch: tags_of((batch.get("metadata") or {}).get("displayName")),
    service_batch_id=lambda batch_id: f"batch_{batch_id}",
)

PROFILES = {p.name: p for p in (OPENAI, ANTHROPIC, GEMINI)}
