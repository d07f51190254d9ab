"""``BatchPipelineComponent``: a batch pipeline declared in a ``defs.yaml``, a thin layer over
:func:`~batch_pipelines.pipeline.factory.build_batch_pipeline`.

Every attribute is one of ``build_batch_pipeline``'s arguments, with the default
:class:`~batch_pipelines.pipeline.options.PipelineOptions` gives it; the request is a
:class:`~batch_pipelines.requests.RequestSpec` whose ``output_model`` (and ``build_body``) are
import paths, and ``provider`` optionally configures the
:class:`~batch_pipelines.pipeline.resource.BatchProviderResource` under ``resource_key``::

    type: batch_pipelines.BatchPipelineComponent
    attributes:
      name: classify_texts
      source: texts
      partitions_def: {type: daily, start_date: "2026-03-02"}
      request:
        model: kimi-k2.5
        key_column: text_id
        output_model: my_project.models:TextCategory
        messages:
          - {role: system, content: "Classify the text."}
          - {role: user, content: "{text}"}
      provider:
        provider: moonshot
        api_key_env: MOONSHOT_API_KEY

The API key is named, never written: ``api_key_env`` becomes a ``dg.EnvVar``, read at run time
(without it the profile's own variable, ``MOONSHOT_API_KEY`` here, is read). An ``api_key`` value
in the YAML is refused, since it would be stored and shown as plain resource config.

Note that ``{text}`` is the request's own template (``str.format`` over the row's columns), left
alone by the component's ``{{ }}`` templating.
"""

import importlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import dagster as dg
from dagster.components.resolved.core_models import (
    DailyPartitionsDefinitionModel,
    HourlyPartitionsDefinitionModel,
    StaticPartitionsDefinitionModel,
    TimeWindowPartitionsDefinitionModel,
    WeeklyPartitionsDefinitionModel,
    resolve_partitions_def,
)
from pydantic import Field

from batch_pipelines.pipeline.factory import BatchPipeline, build_batch_pipeline
from batch_pipelines.pipeline.options import DEFAULT_OPTIONS, PipelineOptions
from batch_pipelines.pipeline.resource import BatchProviderResource
from batch_pipelines.profiles import CHAT_COMPLETIONS
from batch_pipelines.requests import MediaPart, RequestSpec

__all__ = ["BatchPipelineComponent", "RequestModel"]


class RequestModel(dg.Model):
    """How a row becomes a request: :class:`~batch_pipelines.requests.RequestSpec` in YAML."""

    model: str = Field(description="The model every request names.")
    endpoint: str = Field(default=CHAT_COMPLETIONS, description="The Batch API endpoint the requests go to.")
    messages: list[dict[str, Any]] | None = Field(
        default=None, description="Message dicts whose strings are str.format templates over the row's columns: '{text}'."
    )
    input_template: str | None = Field(default=None, description="One template, sent as the prompt, input or user message.")
    build_body: str | None = Field(default=None, description="Import path of a function row -> body, e.g. 'my_project.requests:body'.")
    body: dict[str, Any] = Field(default_factory=dict, description="Fixed body parameters: temperature, max_tokens...")
    output_model: str | None = Field(
        default=None, description="Import path of a pydantic model for structured output, e.g. 'my_project.models:Label'."
    )
    media: list[dict[str, Any]] = Field(default_factory=list, description="Image or video parts taken from columns (MediaPart).")
    key_column: str | None = Field(default=None, description="The column custom_ids come from (default: the index).")

    def to_spec(self) -> RequestSpec:
        """The RequestSpec: import paths imported, media parts checked."""
        fields = self.model_dump(exclude_unset=True)
        for name in ("output_model", "build_body"):
            if fields.get(name) is not None:
                fields[name] = _import_object(fields[name], what=f"request.{name}")
        fields["media"] = [MediaPart(**part) for part in self.media]
        return RequestSpec(**fields)


def _provider(settings: dict[str, Any]) -> BatchProviderResource:
    fields = dict(settings)
    if "api_key" in fields:
        raise ValueError("provider.api_key: name the environment variable instead (api_key_env: MOONSHOT_API_KEY)")
    key_env = fields.pop("api_key_env", None)
    if key_env is not None:
        fields["api_key"] = dg.EnvVar(key_env)
    return BatchProviderResource(**fields)


def _import_object(path: str, *, what: str) -> Any:
    """``package.module:Name`` (or ``package.module.Name``) imported."""
    module_name, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"{what}: {path!r} is not an import path like 'my_project.models:Label'")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what}: cannot import {path!r}: {exc}") from None


_STATUSES = {"running": dg.DefaultSensorStatus.RUNNING, "stopped": dg.DefaultSensorStatus.STOPPED}
_STATUS_NAMES = {status: name for name, status in _STATUSES.items()}

_PARTITIONS_MODELS = (
    HourlyPartitionsDefinitionModel
    | DailyPartitionsDefinitionModel
    | WeeklyPartitionsDefinitionModel
    | TimeWindowPartitionsDefinitionModel
    | StaticPartitionsDefinitionModel
)


@dataclass
class BatchPipelineComponent(dg.Component, dg.Resolvable):
    """A batch pipeline: request files, batches, a polling sensor and the results joined back to the rows.

    Attributes are :func:`~batch_pipelines.pipeline.factory.build_batch_pipeline`'s arguments. The source
    asset, a pandas DataFrame, is defined elsewhere in the project: give ``partitions_def`` when it
    is partitioned (the component sees only its key).
    """

    #: Prefix of every definition (<name>_requests, <name>_batch...) and the tag of its batches.
    name: str
    #: Asset key of the source DataFrame: "texts", or "raw/texts" for a key with a prefix.
    source: str
    request: RequestModel
    partitions_def: Annotated[
        dg.PartitionsDefinition | None,
        dg.Resolver(resolve_partitions_def, model_field_type=_PARTITIONS_MODELS | None, description="The source's partitions."),
    ] = None
    #: BatchProviderResource settings, bound to resource_key; api_key_env names the key's variable.
    provider: dict[str, Any] | None = None
    # The pipeline's options (see PipelineOptions for what each does), in YAML's types.
    policy: Literal["fail", "quarantine"] = DEFAULT_OPTIONS.policy
    max_attempts: int = DEFAULT_OPTIONS.max_attempts
    retry_invalid_output: bool = DEFAULT_OPTIONS.retry_invalid_output
    on_stale: Literal["resend", "report"] = DEFAULT_OPTIONS.on_stale
    cancel_superseded: bool = DEFAULT_OPTIONS.cancel_superseded
    superseded_wait_seconds: float = DEFAULT_OPTIONS.superseded_wait_seconds
    reuse: bool = DEFAULT_OPTIONS.reuse
    reuse_retention_days: float = DEFAULT_OPTIONS.reuse_retention_days
    failure_rate_threshold: float = DEFAULT_OPTIONS.failure_rate_threshold
    blocking: bool = DEFAULT_OPTIONS.blocking
    cancel_on_termination: bool = DEFAULT_OPTIONS.cancel_on_termination
    resource_key: str = DEFAULT_OPTIONS.resource_key
    io_manager_key: str = DEFAULT_OPTIONS.io_manager_key
    group_name: str | None = DEFAULT_OPTIONS.group_name
    key_prefix: list[str] | None = DEFAULT_OPTIONS.key_prefix  # type: ignore[assignment]
    #: Fixed extra batch metadata (a team tag), at most 8 pairs.
    batch_tags: dict[str, str] | None = DEFAULT_OPTIONS.batch_tags  # type: ignore[assignment]
    max_cost_per_partition_usd: float | None = DEFAULT_OPTIONS.max_cost_per_partition_usd
    max_cost_per_run_usd: float | None = DEFAULT_OPTIONS.max_cost_per_run_usd
    max_requests_per_shard: int | None = DEFAULT_OPTIONS.max_requests_per_shard
    sensor_minimum_interval_seconds: int = DEFAULT_OPTIONS.sensor_minimum_interval_seconds
    sensor_tick_budget_seconds: float = DEFAULT_OPTIONS.sensor_tick_budget_seconds
    sensor_default_status: Literal["running", "stopped"] = _STATUS_NAMES[DEFAULT_OPTIONS.sensor_default_status]

    def options(self) -> PipelineOptions:
        """The pipeline options these attributes set."""
        values = {name: getattr(self, name) for name in PipelineOptions.names()}
        values["sensor_default_status"] = _STATUSES[self.sensor_default_status]
        return PipelineOptions(**values)

    def build_pipeline(self) -> BatchPipeline:
        """The pipeline :func:`~batch_pipelines.pipeline.factory.build_batch_pipeline` makes of these attributes."""
        return build_batch_pipeline(
            self.name,
            source=dg.AssetKey.from_user_string(self.source),
            spec=self.request.to_spec(),
            partitions_def=self.partitions_def,
            **vars(self.options()),
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        defs = self.build_pipeline().defs
        if self.provider is None:
            return defs
        return dg.Definitions.merge(defs, dg.Definitions(resources={self.resource_key: _provider(self.provider)}))
