"""Cost before spending: what a submission is estimated to cost, and the budgets that refuse it
before anything is uploaded (the pipeline's and the resource's, per partition and per run)."""

from dataclasses import dataclass
from typing import Any

import dagster as dg

from batch_pipelines.pipeline.ledger import run_submitted_cost
from batch_pipelines.pipeline.metadata import usd
from batch_pipelines.pipeline.options import PipelineOptions
from batch_pipelines.pipeline.resource import BatchProviderResource
from batch_pipelines.requests import RequestEstimate, RequestManifest, RequestSpec, estimate_requests
from batch_pipelines.results import Prices

__all__ = ["SubmissionBudget"]

Context = dg.AssetExecutionContext | dg.OpExecutionContext


@dataclass(frozen=True)
class SubmissionBudget:
    """The estimate and budgets of one pipeline's submissions through one resource."""

    name: str
    spec: RequestSpec
    options: PipelineOptions
    resource: BatchProviderResource

    def limits(self) -> dict[str, float]:
        """The budgets (USD) that apply, by scope ("partition", "run"): the lower of the pipeline's and the resource's."""
        pairs = {
            "partition": (self.options.max_cost_per_partition_usd, self.resource.max_cost_per_partition_usd),
            "run": (self.options.max_cost_per_run_usd, self.resource.max_cost_per_run_usd),
        }
        return {scope: min(v for v in values if v is not None) for scope, values in pairs.items() if any(v is not None for v in values)}

    def estimate(self, manifest: RequestManifest) -> tuple[RequestEstimate, Prices | None, float | None]:
        """Tokens of ``manifest``'s requests, the prices used, and the cost bound (USD; None without a bound)."""
        tokens = estimate_requests(manifest, self.spec)
        prices = self.resource.prices(self.spec.model)
        cost = None
        if prices is not None and tokens.max_output_tokens is not None:
            cost = prices.batch_cost(self.resource.profile, input_tokens=tokens.input_tokens, output_tokens=tokens.max_output_tokens)
        return tokens, prices, cost

    def metadata(self, manifest: RequestManifest) -> dict[str, Any]:
        """What the requests' materialization says of their cost: rows, tokens, prices, estimate and budgets."""
        tokens, prices, cost = self.estimate(manifest)
        metadata: dict[str, Any] = {
            "rows_to_send": tokens.requests,
            "estimated_input_tokens": tokens.input_tokens,
            "max_output_tokens": tokens.max_output_tokens if tokens.max_output_tokens is not None else "unbounded (no max_tokens)",
            "price_source": prices.source if prices is not None else "none (set input and output prices)",
        }
        if cost is not None:
            metadata["estimated_cost_usd"] = usd(cost)
        for scope, budget in self.limits().items():
            metadata["budget_usd" if scope == "partition" else "run_budget_usd"] = usd(budget)
        return metadata

    def check(self, context: Context, manifest: RequestManifest, *, spent: float = 0.0) -> float | None:
        """Refuse, before anything is uploaded, a submission whose cost may take the partition or the run over budget.

        ``spent`` is what the partition's round has cost so far (a retry's earlier attempts); what
        the run submitted so far is read from its event log. Returns the estimated cost (None:
        no prices, or no bound on the answers).
        """
        if not manifest.requests:
            return 0.0  # nothing to send: nothing to refuse
        tokens, prices, cost = self.estimate(manifest)
        for scope, budget in self.limits().items():
            so_far = spent if scope == "partition" else run_submitted_cost(context.instance, context.run_id)
            if prices is None:
                why = f"no price is known for model {self.spec.model!r}: set the resource's input and output prices"
            elif cost is None:
                why = "the answers' length is not bounded: set max_tokens (or max_completion_tokens) in the request body"
            elif cost + so_far > budget:
                earlier = "on earlier attempts" if scope == "partition" else "by this run already"
                after = f", after {so_far:.6g} USD submitted {earlier}" if so_far else ""
                why = (
                    f"the estimated cost is {cost:.6g} USD ({tokens.requests} requests, about {tokens.input_tokens} input "
                    f"and at most {tokens.max_output_tokens} output tokens, {prices.source} prices){after}, over the budget"
                )
            else:
                continue
            raise dg.Failure(
                description=f"{self.name}: not submitted, nothing uploaded: {why} of {budget:.6g} USD per {scope}",
                metadata={"budget_usd": usd(budget), **({"estimated_cost_usd": usd(cost)} if cost is not None else {})},
                allow_retries=False,
            )
        return cost
