"""The Dagster resource that hands out a Batch API client.

``BatchProviderResource`` is configured once per code location and shared by every pipeline the
factory builds (``resource_key="batch_provider"`` by default, see ``PipelineOptions``)::

    defs = dg.Definitions(
        ...,
        resources={
            "batch_provider": BatchProviderResource(
                provider="moonshot",
                api_key=dg.EnvVar("MOONSHOT_API_KEY"),
                input_price_per_million=0.60,
                output_price_per_million=2.50,
            )
        },
    )

With no configuration it is the embedded ``local`` provider, keeping its data under
``$DAGSTER_HOME/batch_pipelines/local``: the demo runs without a key. The API key is never part of
the resource's repr, Dagster metadata or logs; when it is unset the profile's environment variable
(``MOONSHOT_API_KEY``, ``OPENAI_API_KEY``..., on Gemini ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``)
is read when a provider is made, at run time.

The ``forward_*`` settings have the local provider answer every request through a real-time
OpenAI-compatible server of your own (vLLM, Ollama, llama.cpp): the same pipeline, outcomes,
retries and checks, on your model. Its key's variable must be set wherever a provider is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import httpx
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from batch_pipelines.profiles import (
    EXPIRES_AFTER_MAX_SECONDS,
    EXPIRES_AFTER_MIN_SECONDS,
    ProviderProfile,
    env_var_problem,
    get_profile,
    resolve_profile,
)
from batch_pipelines.providers import (
    DEFAULT_FORWARD_CONCURRENCY,
    LOCAL,
    Batch,
    BatchProvider,
    ForwardingResponder,
    make_provider,
)
from batch_pipelines.results import Prices, table_prices
from batch_pipelines.storage import Storage
from batch_pipelines.submission import RecordedBatches, cancel_partition_batches

__all__ = ["BatchProviderResource"]


class BatchProviderResource(dg.ConfigurableResource):
    """A provider's Batch API, as configured for this code location.

    ``get_provider()`` returns a :class:`~batch_pipelines.providers.BatchProvider`; use it as a
    context manager so its connections are released.
    """

    # A misspelt setting (input_price=) is refused rather than silently left at its default; a
    # refused value is never echoed in the error, since it may be a key.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    provider: str = Field(
        default=LOCAL,
        description=(
            "'local' (embedded, no key), 'moonshot', 'openai', 'fastapi_ai', 'groq', 'anthropic' (Message Batches), 'gemini' (Batch Mode), "
            "or 'custom' (any OpenAI-compatible service at base_url)."
        ),
    )
    base_url: str | None = Field(
        default=None, description="Overrides the profile's base URL (a gateway, a proxy); required for 'custom'."
    )
    api_key: str | None = Field(
        default=None,
        repr=False,
        description=(
            "The API key, e.g. dg.EnvVar('MOONSHOT_API_KEY'). Unset: the profile's environment variable "
            "is read at run time. Never logged nor recorded."
        ),
    )
    completion_window: str | None = Field(
        default=None, description="Completion window of every batch ('24h', '3d'...); unset: the profile's default."
    )
    output_expires_after_seconds: int | None = Field(
        default=None,
        ge=EXPIRES_AFTER_MIN_SECONDS,
        le=EXPIRES_AFTER_MAX_SECONDS,
        description=(
            "Seconds (3600 to 2592000) the provider keeps each batch's output and error files before deleting them "
            "(OpenAI's output_expires_after, anchored at the files' creation); unset: the provider's default. "
            "Only where the profile supports it (OpenAI, fastapi.ai, custom); the results are downloaded long before."
        ),
    )
    local_data_dir: str | None = Field(
        default=None, description="Where the local provider keeps files and batches; unset: $DAGSTER_HOME/batch_pipelines/local."
    )
    local_profile: str = Field(
        default="openai",
        description="The provider the local provider poses as: its limits, validation and protocol ('anthropic': Message Batches, 'gemini': Batch Mode).",
    )
    local_speed: Literal["instant", "realistic"] = Field(
        default="instant", description="'instant' for tests, 'realistic' to watch a batch progress in the UI."
    )
    local_seconds_per_request: float = Field(
        default=0.0,
        ge=0,
        description="Local provider only: the least time each request takes (0: as fast as local_speed allows), so a batch stays in progress long enough to watch.",
    )
    forward_url: str | None = Field(
        default=None,
        description=(
            "Local provider only: answer each request through this real-time OpenAI-compatible server's API root "
            "(vLLM, Ollama, llama.cpp: 'http://127.0.0.1:8000/v1') instead of the built-in responder."
        ),
    )
    forward_model: str | None = Field(
        default=None, description="Local provider only, with forward_url: the model sent upstream in place of the request's."
    )
    forward_concurrency: int = Field(
        default=DEFAULT_FORWARD_CONCURRENCY, ge=1, description="Local provider only, with forward_url: requests in flight upstream at once."
    )
    forward_api_key_env: str | None = Field(
        default=None,
        description=(
            "Local provider only, with forward_url: the environment variable holding the upstream server's key "
            "(its name, never the key); unset: no key is sent."
        ),
    )
    storage_dir: str | None = Field(
        default=None,
        description=(
            "Where request files, manifests, downloaded results and the reuse store are kept: a local path "
            "or an fsspec URL ('s3://bucket/prefix', 'gs://...', 'az://...'; s3 needs the 's3' extra); unset: "
            "<instance storage>/batch_pipelines. Every run worker of the deployment must reach it (no shared disk "
            "is needed with object storage)."
        ),
    )
    storage_options: dict[str, Any] = Field(
        default={},  # (a copy per resource: pydantic copies mutable defaults)
        description=(
            "Options of storage_dir's filesystem, e.g. {'endpoint_url': 'http://minio:9000'} or "
            "{'client_kwargs': {'region_name': 'eu-west-1'}}; never credentials: those come from the "
            "environment (AWS_ACCESS_KEY_ID..., a profile, an instance role) as the filesystem finds them."
        ),
    )
    poll_interval_seconds: float = Field(
        default=30.0, ge=0, description="Shortest wait between two polls of one batch (providers advise 30-60 s)."
    )
    max_poll_interval_seconds: float = Field(
        default=300.0, ge=0, description="Longest wait between two polls of a long-running batch."
    )
    request_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description=(
            "Seconds to wait for one answer of the provider's HTTP API before retrying it (connecting: at most 10 s). "
            "A create whose answer does not come in time is looked up at the provider, never sent twice."
        ),
    )
    max_concurrent_polls: int = Field(
        default=32, ge=1, description="Batches polled at the same time (a retrieve is a light GET; lower it for strict rate limits)."
    )
    resubmit_delay_seconds: float = Field(
        default=600.0,
        ge=0,
        description=(
            "Wait before submitting again a shard the provider refused because its queue of enqueued tokens was "
            "full (a batch failed with token_limit_exceeded); doubles with each further refusal of the shard, up to 16-fold."
        ),
    )
    max_resubmits: int = Field(
        default=8,
        ge=0,
        description="Refusals for a full queue a shard gets submitted again after; then its rows are reported failed.",
    )
    delete_files_after_download: bool | None = Field(
        default=None,
        description="Delete a batch's input, output and error files from the provider once its results are on disk; unset: the profile's default.",
    )
    input_price_per_million: float | None = Field(
        default=None,
        description=(
            "Real-time price per million input tokens (the batch discount is applied to it); unset with the output "
            "price: the model's price in the offline price table (genai-prices), if it has one."
        ),
    )
    output_price_per_million: float | None = Field(
        default=None, description="Real-time price per million output tokens (the batch discount is applied to it)."
    )
    max_cost_per_partition_usd: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Refuse to submit a partition whose estimated cost (USD, batch discount applied) exceeds this, before "
            "anything is uploaded; every pipeline of the code location. A pipeline's own budget applies too."
        ),
    )
    max_cost_per_run_usd: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Refuse a submission that would take what one run submits (estimated USD, every pipeline's batches and "
            "retries in it) over this, before anything is uploaded. A pipeline's own run budget applies too."
        ),
    )

    @field_validator("forward_api_key_env")
    @classmethod
    def _an_env_var_name(cls, name: str | None) -> str | None:
        if name is not None and (problem := env_var_problem(name, what="forward_api_key_env")):
            raise ValueError(problem)
        return name

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, options: dict[str, Any]) -> dict[str, Any]:
        if secrets := sorted(_credential_keys(options)):
            raise ValueError(
                f"storage_options {secrets}: credentials do not belong in configuration; set them in the "
                "environment of every run worker (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE...)"
            )
        return options

    @model_validator(mode="after")
    def _forwarding_is_local(self) -> BatchProviderResource:
        if self.forward_url is not None and self.provider != LOCAL:
            raise ValueError(f"forward_url applies to the local provider only, not to {self.provider!r}")
        # By value, not by the fields set: Dagster rebuilds a resource from its full config.
        defaults = type(self).model_fields
        stray = [name for name in _FORWARD_OPTIONS if getattr(self, name) != defaults[name].default]
        if stray and self.forward_url is None:
            raise ValueError(f"{', '.join(stray)}: no effect without forward_url (the server requests are forwarded to)")
        return self

    # Where the tags of batches at a provider without metadata are recorded (the storage of the
    # instance the resource was set up with): every run worker of the deployment sees them.
    _records_storage: Storage | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if context.instance is not None:
            self._records_storage = self.storage(context.instance)

    @property
    def profile(self) -> ProviderProfile:
        """The rules batches are checked against: the provider's, or those the local provider applies."""
        if self.provider == LOCAL:
            return get_profile(self.local_profile)
        return resolve_profile(self.provider, self.base_url)

    def get_provider(self) -> BatchProvider:
        """A new client for the configured provider (close it, or use it in a ``with`` block).

        A provider that keeps no batch metadata (Anthropic) comes wrapped so that its batches'
        tags are recorded in the storage (see :class:`~batch_pipelines.submission.RecordedBatches`).
        """
        if self.provider == LOCAL:
            provider = self._local_provider()
        else:
            timeout = httpx.Timeout(self.request_timeout_seconds, connect=min(10.0, self.request_timeout_seconds))
            provider = make_provider(self.profile, api_key=self.api_key, base_url=self.base_url, timeout=timeout)
        storage = Storage(self.storage_dir, self.storage_options) if self.storage_dir else self._records_storage
        if provider.profile.supports_metadata or storage is None:
            return provider
        return RecordedBatches(provider, storage, _BATCH_RECORDS)

    def _local_provider(self) -> BatchProvider:
        if self.forward_url is None:
            return make_provider(LOCAL, data_dir=self.local_data_dir, pose_as=self.local_profile, **self._local_options)
        # Built here so that an unset key variable fails now, in the run, not in the worker; the
        # engine records only its spec (URL, model, concurrency, the variable's name) and each
        # batch's worker builds its own, so this one is closed at once.
        forward = ForwardingResponder(
            self.forward_url,
            model=self.forward_model,
            concurrency=self.forward_concurrency,
            api_key_env=self.forward_api_key_env,
        )
        try:
            return make_provider(
                LOCAL, data_dir=self.local_data_dir, pose_as=self.local_profile, responder=forward, **self._local_options
            )
        finally:
            forward.close()

    @property
    def _local_options(self) -> dict[str, Any]:
        return {"speed": self.local_speed, "seconds_per_request": self.local_seconds_per_request}

    @property
    def delete_files(self) -> bool:
        """Whether provider files are deleted once results are downloaded."""
        if self.delete_files_after_download is not None:
            return self.delete_files_after_download
        return self.profile.delete_files_after_download

    def prices(self, model: str | None = None) -> Prices | None:
        """The configured prices; unset, ``model``'s from the offline price table; else None (no cost shown)."""
        if self.input_price_per_million is None and self.output_price_per_million is None:
            return table_prices(self.provider, model) if model else None
        return Prices(input_per_million=self.input_price_per_million or 0.0, output_per_million=self.output_price_per_million or 0.0)

    @property
    def window(self) -> str:
        return self.completion_window or self.profile.default_window

    def storage(self, instance: dg.DagsterInstance) -> Storage:
        """The storage request files, downloaded results and the reuse store live in."""
        if self.storage_dir:
            return Storage(self.storage_dir, self.storage_options)
        return Storage(Path(instance.storage_directory()) / "batch_pipelines", self.storage_options)

    def poll_delay(self, age_seconds: float, errors: int = 0) -> float:
        """Seconds to wait before polling a batch again.

        Grows with the batch's age (a batch that ran an hour will not finish in the next second),
        bounded by the two poll settings, and doubles with each consecutive polling error.
        """
        delay = min(max(self.poll_interval_seconds, age_seconds / 10), self.max_poll_interval_seconds)
        if errors:
            delay = min(max(delay, 1.0) * 2 ** min(errors, 16), self.max_poll_interval_seconds)
        return delay

    def resubmit_delay(self, refusals: int) -> float:
        """Seconds to wait before submitting again a shard refused ``refusals`` times for a full queue."""
        return self.resubmit_delay_seconds * 2 ** min(max(refusals - 1, 0), 4)

    def cancel_partitions(self, pipeline: str, partitions: Sequence[str | None]) -> list[Batch]:
        """Cancel every live batch a pipeline submitted for ``partitions``; returns those cancelled.

        Batches are found at the provider by their tags, so this also reaches batches whose
        submission Dagster never recorded. Terminal batches are left alone.
        """
        with self.get_provider() as provider:
            return cancel_partition_batches(provider, pipeline, partitions)


#: The folder of the storage where the tags of batches at a provider without metadata are recorded.
_BATCH_RECORDS = "_batch_records"
#: Words that make a storage option a credential.
_CREDENTIAL_WORDS = ("secret", "password", "token", "access_key", "credential", "account_key", "sas")


def _credential_keys(options: Any, where: str = "") -> list[str]:
    """The (dotted) keys of ``options`` that name a credential, at any depth."""
    found = []
    if isinstance(options, dict):
        for key, value in options.items():
            name = f"{where}.{key}" if where else str(key)
            lowered = str(key).lower()
            if lowered in ("key", "username") or any(word in lowered for word in _CREDENTIAL_WORDS):
                found.append(name)
            found += _credential_keys(value, name)
    return found


#: The settings that shape forwarding, meaningless without ``forward_url``.
_FORWARD_OPTIONS = ("forward_model", "forward_concurrency", "forward_api_key_env")
