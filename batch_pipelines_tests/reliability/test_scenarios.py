"""Every fault of the reliability table, end to end: no row lost, none paid twice, no answer to other
content, every outcome counted.

The same scenarios ``make reliability`` prints as a table (see ``scenarios.py``).
"""

import pytest

from batch_pipelines_tests.reliability.scenarios import SCENARIOS
from batch_pipelines_tests.reliability.world import PARTITIONS, ROWS, Scenario, run_scenario


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_no_row_is_lost_and_no_batch_is_paid_twice(scenario: Scenario) -> None:
    measured = run_scenario(scenario)

    assert measured.problem is None, measured.problem
    assert measured.rows_in == ROWS * len(PARTITIONS)
    assert measured.rows_lost == 0
    assert measured.duplicate_submissions == 0
    assert measured.wrong_answers == 0
    assert sum(measured.outcomes.values()) == measured.rows_in
