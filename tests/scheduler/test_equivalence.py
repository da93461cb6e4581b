"""The fast scheduler places exactly as the slow, obviously-correct one (sched_oracle)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sched_oracle import schedule as oracle_schedule
from sched_strategies import nodes, requests, running

from gitorch.scheduler import LEAST_ALLOCATED, MOST_ALLOCATED, schedule


@settings(max_examples=400, deadline=None)
@given(st.data(), st.sampled_from([LEAST_ALLOCATED, MOST_ALLOCATED]))
def test_same_decisions_and_reasons_as_the_oracle(data: st.DataObject, strategy: str) -> None:
    node_list = data.draw(nodes())
    live = data.draw(running(node_list))
    reqs = data.draw(requests())
    assert schedule(node_list, live, reqs, strategy=strategy) == oracle_schedule(
        node_list, live, reqs, strategy=strategy
    )
