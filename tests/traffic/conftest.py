"""Fixtures for the load balancer tests: a balancer per test, backend processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from traffic_helpers import Apps

from gitorch.traffic.builtin.balancer import BuiltinLoadBalancer


@pytest.fixture
def lb() -> Iterator[BuiltinLoadBalancer]:
    balancer = BuiltinLoadBalancer("127.0.0.1")
    try:
        yield balancer
    finally:
        balancer.close()


@pytest.fixture
def apps() -> Iterator[Apps]:
    started = Apps()
    try:
        yield started
    finally:
        started.stop_all()
