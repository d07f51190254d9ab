"""A batch's ``usage``: the tokens of its answered rows, summed, in the shape of the SDK's ``BatchUsage``.

Answers count tokens in one of two dialects: chat completions, completions and embeddings say
``prompt_tokens`` / ``completion_tokens`` (details under ``prompt_tokens_details`` and
``completion_tokens_details``); responses, images and Anthropic's messages say ``input_tokens`` /
``output_tokens`` (details under ``input_tokens_details``, ``output_tokens_details``). A batch adds
both up the same way; an answer without usage (a video job, a moderation) adds nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["UsageSum", "usage_json"]


class UsageSum:
    """Input, cached input, output and reasoning tokens of the answers added so far."""

    __slots__ = ("cached", "input", "output", "reasoning")

    def __init__(self) -> None:
        self.input = self.cached = self.output = self.reasoning = 0

    def add(self, body: Any) -> None:
        usage = body.get("usage") if type(body) is dict else None
        if type(usage) is not dict:
            return
        self.input += _count(usage.get("input_tokens", usage.get("prompt_tokens")))
        self.output += _count(usage.get("output_tokens", usage.get("completion_tokens")))
        inputs = usage.get("input_tokens_details") or usage.get("prompt_tokens_details")
        if type(inputs) is dict:
            self.cached += _count(inputs.get("cached_tokens"))
        outputs = usage.get("output_tokens_details") or usage.get("completion_tokens_details")
        if type(outputs) is dict:
            self.reasoning += _count(outputs.get("reasoning_tokens"))


def usage_json(row: Any) -> dict[str, Any]:
    """A stored batch's summed usage as the SDK's ``BatchUsage``."""
    return {
        "input_tokens": row["input_tokens"],
        "input_tokens_details": {"cached_tokens": row["cached_tokens"]},
        "output_tokens": row["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": row["reasoning_tokens"]},
        "total_tokens": row["input_tokens"] + row["output_tokens"],
    }


def _count(value: Any) -> int:
    # A responder's odd count (a string, a negative, a bool) is not the batch's to add up.
    return value if type(value) is int and value > 0 else 0
