"""Every fault of the reliability table, end to end: no row lost, none paid twice, no answer to other
content, every outcome counted.

The same scenarios ``make reliability`` prints as a table (see ``scenarios.py``): every one on the
OpenAI profile; on Anthropic, to keep ``make test`` short, the ones where its missing batch metadata
matters most (the crash after accept, the lost create answer, expiry, failed rows) — ``make
reliability`` runs them all there; on Gemini likewise a subset (its tags in the displayName, its
inline answers).
"""

import pytest

from batch_pipelines_tests.reliability.scenarios import SCENARIOS
from batch_pipelines_tests.reliability.world import PARTITIONS, ROWS, Scenario, run_scenario
from batch_pipelines_tests.support.profiles import ANTHROPIC, GEMINI, OPENAI, Profile

ANTHROPIC_SUBSET = ("crash_after_accept", "server_errors", "connection_resets", "expiry", "no_output_file")
#: On Gemini: where its tags in the displayName and its inline answers matter most.
GEMINI_SUBSET = ("crash_after_accept", "connection_resets", "expiry", "duplicate_and_unknown_ids")

CASES = [pytest.param(OPENAI, s, id=f"openai-{s.name}") for s in SCENARIOS] + [
    pytest.param(ANTHROPIC, s, id=f"anthropic-{s.name}") for s in SCENARIOS if s.name in ANTHROPIC_SUBSET
] + [pytest.param(GEMINI, s, id=f"gemini-{s.name}") for s in SCENARIOS if s.name in GEMINI_SUBSET]


@pytest.mark.parametrize(("profile", "scenario"), CASES)
def test_no_row_is_lost_and_no_batch_is_paid_twice(profile: Profile, scenario: Scenario) -> None:
    assert profile.name not in scenario.not_on
    measured = run_scenario(scenario, profile)

    assert measured.problem is None, measured.problem
    assert measured.rows_in == ROWS * len(PARTITIONS)
    assert measured.rows_lost == 0
    assert measured.duplicate_submissions == 0
    assert measured.wrong_answers == 0
    assert sum(measured.outcomes.values()) == measured.rows_in


def test_the_anthropic_subset_names_scenarios_that_exist() -> None:
    assert set(ANTHROPIC_SUBSET) <= {s.name for s in SCENARIOS}
    assert set(GEMINI_SUBSET) <= {s.name for s in SCENARIOS}
