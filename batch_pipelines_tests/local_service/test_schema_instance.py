"""JSON-schema instances: choices that depend on ``pick``, numbers spread within their bounds."""

from __future__ import annotations

from batch_pipelines.local_service import schema_instance


def test_enum_choice_depends_on_the_prompt_deterministically():
    schema = {"type": "object", "properties": {"label": {"enum": ["a", "b", "c", "d"]}}, "required": ["label"]}
    picks = {schema_instance(schema, pick=i)["label"] for i in range(8)}
    assert picks == {"a", "b", "c", "d"}
    assert schema_instance(schema, pick=5) == schema_instance(schema, pick=5)


def test_bounded_numbers_spread_over_their_range():
    schema = {
        "type": "object",
        "properties": {
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "stars": {"type": "integer", "minimum": 1, "maximum": 5},
            "open": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        },
        "required": ["confidence", "stars", "open"],
    }
    answers = [schema_instance(schema, pick=pick) for pick in range(200)]
    assert all(0 <= a["confidence"] <= 1 and 1 <= a["stars"] <= 5 and 0 < a["open"] < 1 for a in answers)
    assert len({a["confidence"] for a in answers}) > 50 and {a["stars"] for a in answers} == {1, 2, 3, 4, 5}
