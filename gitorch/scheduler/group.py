"""Finding the best node for a shape without scoring every node each time.

A node's score splits in two: a *local* part that depends only on the node (its free
resources, its static bonuses, the replicas on it) and a *domain* part shared by all
nodes of its domain (preferred affinity or ScheduleAnyway spread by zone, say). Likewise
the filters: local ones (resources, maxPerNode, anti-affinity per node) and domain ones
(anti-affinity, required affinity and DoNotSchedule spread by zone).

So candidate nodes are grouped into *cells* (one per combination of the shape's domain
values; a single cell when the shape has no domain terms), and each cell keeps a max-heap
of its nodes by local score. A heap entry remembers the node's ``version`` when it was
scored: a placement on the node bumps the version, and the stale entry is rescored when it
reaches the top (lazy invalidation). The best node is then the best cell top, after adding
each allowed cell's domain part: O(cells + log nodes) per placement instead of O(nodes).

Within one ``schedule()`` call the local filters are monotone: nodes only fill up and
counts only grow, so a node that fails one for a shape never passes again and is dropped
from that shape's heap. Evictions break this, so after one every heap is rebuilt.
"""

from __future__ import annotations

import heapq

from gitorch.scheduler.model import LEAST_ALLOCATED
from gitorch.scheduler.shape import POINT, Shape
from gitorch.scheduler.state import ClusterState

_FULL = 100 * POINT


class _Cell:
    __slots__ = ("domains", "heap")

    def __init__(self, domains: dict[str, str | None]) -> None:
        self.domains = domains
        self.heap: list[tuple[int, int, int]] = []  # (-local score, node index, version)


class PlacementGroup:
    """The candidate nodes of one shape, ready to answer "which node is best now?"."""

    def __init__(self, state: ClusterState, shape: Shape, strategy: str) -> None:
        self.state = state
        self.shape = shape
        self.least = strategy == LEAST_ALLOCATED
        domain_lists = [(key, state.domains(key)) for key in shape.domain_keys]
        cells: dict[tuple[str | None, ...], _Cell] = {}
        version = state.version
        for i in shape.candidates:
            values = tuple(d[i] for _, d in domain_lists)
            cell = cells.get(values)
            if cell is None:
                cell = _Cell({key: d[i] for key, d in domain_lists})
                cells[values] = cell
            if self._fits(i):
                cell.heap.append((-self._local_score(i), i, version[i]))
        for cell in cells.values():
            heapq.heapify(cell.heap)
        self.cells = list(cells.values())

    def _fits(self, i: int) -> bool:
        """The local filters (monotone within one call)."""
        state, shape = self.state, self.shape
        if shape.cpu > state.cpu_alloc[i] - state.cpu_used[i]:
            return False
        if shape.memory > state.mem_alloc[i] - state.mem_used[i]:
            return False
        max_per_node = shape.placement.max_per_node
        if max_per_node and state.count_on(shape.service, i) >= max_per_node:
            return False
        return not any(state.count_on(s, i) for s in shape.anti_on_node)

    def _local_score(self, i: int) -> int:
        state, shape = self.state, self.shape
        cpu_alloc, mem_alloc = state.cpu_alloc[i], state.mem_alloc[i]
        cpu_free = (cpu_alloc - state.cpu_used[i] - shape.cpu) / (cpu_alloc if cpu_alloc > 0 else 1)
        mem_free = (mem_alloc - state.mem_used[i] - shape.memory) / (
            mem_alloc if mem_alloc > 0 else 1
        )
        free = round(50 * POINT * (cpu_free + mem_free))  # 100 * the mean free share
        points = shape.static_points[i] - shape.own_penalty * state.count_on(shape.service, i)
        for service, weight in shape.prefer_on_node:
            if state.count_on(service, i):
                points += weight
        for service, weight in shape.avoid_on_node:
            points -= weight * state.count_on(service, i)
        return (free if self.least else _FULL - free) + POINT * points

    def _cell_points(self, cell: _Cell) -> int | None:
        """The domain part of the score, or None when a domain filter rules the cell out."""
        state, shape, domains = self.state, self.shape, cell.domains
        for service, key in shape.anti_in_domain:
            domain = domains[key]
            if domain is not None and state.domain_counter(service, key).counts.get(domain):
                return None
        for service, key in shape.affinity_in_domain:
            if not state.total.get(service):
                continue
            domain = domains[key]
            if domain is None or not state.domain_counter(service, key).counts.get(domain):
                return None
        for key, skew, counter in shape.spread_hard:
            if counter.counts.get(domains[key] or "", 0) + 1 - counter.min > skew:
                return None
        points = 0
        for service, key, weight in shape.prefer_in_domain:
            domain = domains[key]
            if domain is not None and state.domain_counter(service, key).counts.get(domain):
                points += weight
        for service, key, weight in shape.avoid_in_domain:
            domain = domains[key]
            if domain is not None:
                points -= weight * state.domain_counter(service, key).counts.get(domain, 0)
        for key in shape.spread_soft_in_domain:
            domain = domains[key]
            if domain is not None:
                points -= 10 * state.domain_counter(shape.service, key).counts.get(domain, 0)
        return POINT * points

    def _top(self, cell: _Cell) -> tuple[int, int] | None:
        """The cell's best (local score, node index), rescoring stale entries."""
        heap, version = cell.heap, self.state.version
        while heap:
            negative, i, seen = heap[0]
            if seen == version[i]:
                return -negative, i
            heapq.heappop(heap)
            if self._fits(i):
                heapq.heappush(heap, (-self._local_score(i), i, version[i]))
        return None

    def best(self) -> int | None:
        """The index of the best node for one more replica now, or None if none fits.
        Ties go to the lowest index, i.e. the first node name."""
        best_score, best_node = 0, -1
        for cell in self.cells:
            if not cell.heap:
                continue
            extra = self._cell_points(cell)
            if extra is None:
                continue
            top = self._top(cell)
            if top is None:
                continue
            score = top[0] + extra
            if best_node < 0 or score > best_score or (score == best_score and top[1] < best_node):
                best_score, best_node = score, top[1]
        return best_node if best_node >= 0 else None
