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

``provider`` takes :class:`~batch_pipelines.pipeline.resource.BatchProviderResource`'s settings
(:class:`ProviderModel`, checked as the resource checks them); without it the pipeline runs on the
embedded ``local`` provider. The API key is named, never written: ``api_key_env`` becomes a
``dg.EnvVar``, read at run time (without it the profile's own variable, ``MOONSHOT_API_KEY`` here,
is read). An ``api_key`` in the YAML, or a value of ``api_key_env`` that is not a variable's name
(a key pasted there), is refused without being shown.

``dg scaffold defs batch_pipelines.BatchPipelineComponent <path>`` writes a pipeline that runs as
it is, on the local provider, over a small source asset beside it (see ``scaffold.py``).

Note that ``{text}`` is the request's own template (``str.format`` over the row's columns), left
alone by the component's ``{{ }}`` templating.
"""

import functools
import importlib
from dataclasses import dataclass, field
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
from pydantic import BaseModel, Field, create_model, model_validator

from batch_pipelines.pipeline.factory import BatchPipeline, build_batch_pipeline
from batch_pipelines.pipeline.options import DEFAULT_OPTIONS, PipelineOptions
from batch_pipelines.pipeline.resource import BatchProviderResource
from batch_pipelines.pipeline.scaffold import BatchPipelineScaffolder
from batch_pipelines.profiles import CHAT_COMPLETIONS, CUSTOM, PROFILES, env_var_problem
from batch_pipelines.providers import LOCAL
from batch_pipelines.requests import MediaPart, RequestSpec

__all__ = ["BatchPipelineComponent", "ProviderModel", "RequestModel"]


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


class _ProviderSettings(dg.Model):
    """What every ProviderModel checks before its fields are read."""

    @model_validator(mode="before")
    @classmethod
    def _named_never_written(cls, data: Any) -> Any:
        # Not a ValueError: pydantic would make it a validation error quoting the block, key
        # included, and Dagster's error (which shows inputs) would print it.
        if isinstance(data, dict):
            if "api_key" in data:
                raise dg.DagsterInvalidDefinitionError(
                    "provider.api_key: a key written in the YAML is refused; name its environment variable instead "
                    "(api_key_env: MOONSHOT_API_KEY)"
                )
            if data.get("api_key_env") is not None and (problem := env_var_problem(data["api_key_env"], what="provider.api_key_env")):
                raise dg.DagsterInvalidDefinitionError(problem)
        return data

    def to_resource(self) -> BatchProviderResource:
        """The resource these settings make: the key's variable as a dg.EnvVar."""
        fields = self.model_dump(exclude_unset=True)
        key_env = fields.pop("api_key_env", None)
        if key_env is not None:
            fields["api_key"] = dg.EnvVar(key_env)
        return BatchProviderResource(**fields)


def _provider_model() -> type[_ProviderSettings]:
    """BatchProviderResource's fields as YAML attributes: the resource stays the one home of their
    defaults and descriptions; ``api_key`` gives way to ``api_key_env``, and the provider names are
    the known ones, so a misspelt one is named by the schema."""
    # Default and description only: Dagster takes no constraint (ge=...) in a plain nested model;
    # the resource checks its bounds when it is made.
    fields: dict[str, Any] = {
        name: (info.annotation, Field(default=info.default, description=info.description))
        for name, info in BatchProviderResource.model_fields.items()
        if name != "api_key"
    }
    provider, local_profile = fields["provider"][1], fields["local_profile"][1]
    fields["provider"] = (Literal[tuple(sorted({LOCAL, CUSTOM, *PROFILES}))], provider)  # type: ignore[valid-type]
    fields["local_profile"] = (Literal[tuple(sorted(PROFILES))], local_profile)  # type: ignore[valid-type]
    fields["api_key_env"] = (
        str | None,
        Field(default=None, description="The environment variable holding the API key (its name: MOONSHOT_API_KEY), read at run time."),
    )
    return create_model("ProviderModel", __base__=_ProviderSettings, __doc__="BatchProviderResource settings in YAML.", **fields)


ProviderModel = _provider_model()


def _render_provider(context: Any, block: _ProviderSettings) -> _ProviderSettings:
    """The block with its ``{{ }}`` templates rendered (``base_url: "{{ env.GATEWAY_URL }}"``),
    checked again: Dagster renders templates of plain nested models only through a resolver."""
    rendered = context.resolve_value(block.model_dump(exclude_unset=True))
    return type(block).model_validate(rendered)

#: The resource of every component without a ``provider`` block: one object, so that several such
#: components merge into one code location (Dagster refuses two objects under one resource key).
_LOCAL_DEFAULT = BatchProviderResource()


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


@dg.scaffold_with(BatchPipelineScaffolder)
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
    #: Unset: the embedded local provider.
    provider: Annotated[
        ProviderModel,  # type: ignore[valid-type]
        dg.Resolver(_render_provider, model_field_type=ProviderModel),
    ] = field(default_factory=ProviderModel)
    # The pipeline's options (see PipelineOptions for what each does), in YAML's types.
    policy: Literal["fail", "quarantine"] = DEFAULT_OPTIONS.policy
    max_attempts: int = DEFAULT_OPTIONS.max_attempts
    retry_invalid_output: bool = DEFAULT_OPTIONS.retry_invalid_output
    on_stale: Literal["resend", "report"] = DEFAULT_OPTIONS.on_stale
    cancel_superseded: bool = DEFAULT_OPTIONS.cancel_superseded
    superseded_wait_seconds: float = DEFAULT_OPTIONS.superseded_wait_seconds
    reuse: bool = DEFAULT_OPTIONS.reuse
    reuse_retention_days: float = DEFAULT_OPTIONS.reuse_retention_days
    storage_retention_days: float = DEFAULT_OPTIONS.storage_retention_days
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
    max_partitions_per_run: int = DEFAULT_OPTIONS.max_partitions_per_run
    results_gather_seconds: float = DEFAULT_OPTIONS.results_gather_seconds
    sensor_minimum_interval_seconds: int = DEFAULT_OPTIONS.sensor_minimum_interval_seconds
    sensor_tick_budget_seconds: float = DEFAULT_OPTIONS.sensor_tick_budget_seconds
    sensor_default_status: Literal["running", "stopped"] = _STATUS_NAMES[DEFAULT_OPTIONS.sensor_default_status]

    @classmethod
    def model(cls) -> type[BaseModel]:
        return _blocks_are_mappings(super().model())

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
        resource = self.provider.to_resource() if self.provider.model_fields_set else _LOCAL_DEFAULT
        return dg.Definitions.merge(self.build_pipeline().defs, dg.Definitions(resources={self.resource_key: resource}))


@functools.cache
def _blocks_are_mappings(derived: type[BaseModel]) -> type[BaseModel]:
    """The component's attribute model, with ``request`` and ``provider`` mappings only.

    Dagster lets every attribute be a ``{{ }}`` template string instead, which makes the schema of
    ``request`` "a RequestModel or a string": a typo in it (``key_colum:``) then reads "is not
    valid under any of the given schemas". These two blocks are always written out, so the string
    is dropped: the schema (``dg check yaml``) and loading (``dg check defs``) name the misspelt
    field. (For the same reason ``provider`` defaults to an empty block, the local provider,
    rather than None.) Templates inside the blocks still work.
    """
    fields = {
        "request": (RequestModel, derived.model_fields["request"]),
        "provider": (ProviderModel, derived.model_fields["provider"]),
    }
    return create_model(derived.__name__, __base__=derived, **fields)
