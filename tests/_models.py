"""Running the Hypothesis models of the scripts until they reach the cases they must reach."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test


def run_until_covered(machine: Any, cases: Iterable[str], max_examples: int) -> Counter[str]:
    """Run ``machine`` (whose ``seen`` counts the cases reached) and return ``seen``.

    The runs must reach the cases that matter, or the model proves little. Which runs the
    derandomized search makes was seen to differ when other tests ran before in the same
    process, so another round with other runs is made while a case is missing."""
    wanted = list(cases)
    for steps in (50, 60, 70):
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=max_examples,
                stateful_step_count=steps,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
        if min(machine.seen[k] for k in wanted) >= 1:
            break
    seen: Counter[str] = machine.seen
    return seen
