"""The fast scheduler places exactly as the slow, obviously-correct one (sched_oracle)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import event, given, settings
from hypothesis import strategies as st
from sched_oracle import schedule as oracle_schedule
from sched_strategies import MI, nodes, requests, running

from gitorch.manifests.model import Placement
from gitorch.scheduler import (
    LEAST_ALLOCATED,
    MOST_ALLOCATED,
    NodeView,
    Placer,
    Request,
    Running,
    schedule,
)


@settings(max_examples=400, deadline=None)
@given(st.data(), st.sampled_from([LEAST_ALLOCATED, MOST_ALLOCATED]))
def test_same_decisions_and_reasons_as_the_oracle(data: st.DataObject, strategy: str) -> None:
    node_list = data.draw(nodes())
    live = data.draw(running(node_list))
    reqs = data.draw(requests())
    assert schedule(node_list, live, reqs, strategy=strategy) == oracle_schedule(
        node_list, live, reqs, strategy=strategy
    )


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from([LEAST_ALLOCATED, MOST_ALLOCATED]), st.booleans())
def test_batches_on_one_placer_as_fresh_schedules(
    data: st.DataObject, strategy: str, preemption: bool
) -> None:
    """A pass places service after service on one Placer: each batch gets what a fresh
    schedule() gives it with every replica placed before running, and victims gone."""
    if data.draw(st.booleans()):
        node_list = data.draw(nodes())
        live = data.draw(running(node_list, max_size=12))
        drawn = data.draw(st.lists(requests(max_size=6), max_size=4))
    else:  # small full nodes, later batches of higher priority: earlier ones are evicted
        node_list = [NodeView(f"n{i}", 1000, 64 * MI) for i in range(data.draw(st.integers(1, 3)))]
        live = []
        drawn = [
            [
                Request(f"s{k}", str(i), cpu, 0, Placement(priority=priority))
                for i in range(data.draw(st.integers(1, 3)))
            ]
            for k, (cpu, priority) in enumerate(
                data.draw(
                    st.lists(
                        st.tuples(st.integers(2, 8).map(lambda c: c * 100), st.integers(0, 3)),
                        min_size=2,
                        max_size=5,
                    )
                )
            )
        ]
    batches = [  # replica names unique across batches, as in a pass
        [replace(r, replica=f"b{k}-{r.replica}") for r in batch] for k, batch in enumerate(drawn)
    ]
    placer = Placer(node_list, live)
    now = list(live)
    for batch in batches:
        expected = schedule(node_list, now, batch, strategy=strategy, preemption=preemption)
        assert placer.place(batch, strategy=strategy, preemption=preemption) == expected
        for req, where in zip(batch, expected, strict=True):
            if where.node is None:
                continue
            event(f"victims: {min(len(where.victims), 2)}")
            gone = set(where.victims)
            now = [r for r in now if (r.service, r.replica, r.node) not in gone]
            now.append(
                Running(
                    req.service,
                    req.replica,
                    where.node,
                    req.cpu_millis,
                    req.memory_bytes,
                    req.priority,
                    req.qos,
                )
            )
