"""The cluster while one ``schedule()`` call places replicas: allocations and counters.

Everything a filter or score asks about is kept up to date incrementally as replicas are
added (and removed, for preemption), so no question needs a scan of all nodes:

* per node: cpu and memory in use, and a ``version`` bumped on every change (the
  placement heaps use it to spot stale scores);
* per service: how many replicas on each node, and in total;
* per (service, topology key): replicas per domain, over every node with that label
  (what service affinity and anti-affinity count);
* per (service, topology key, nodeSelector): replicas per domain over the nodes eligible
  for spread, with the smallest count kept by a histogram (what maxSkew compares to).

Counters for a (service, key) pair are built on first use, from the per-node counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gitorch.scheduler.model import NodeView, Running

SelectorKey = tuple[tuple[str, str], ...]


class DomainCounter:
    """Replicas of one service per domain of one topology key (nodes without the label
    count nowhere)."""

    __slots__ = ("domain_of", "counts")

    def __init__(self, domain_of: list[str | None], on_node: dict[int, int]) -> None:
        self.domain_of = domain_of
        self.counts: dict[str, int] = {}
        for i, n in on_node.items():
            self.change(i, n)

    def change(self, i: int, delta: int) -> None:
        """Node ``i`` gained (or lost) ``delta`` replicas of the service."""
        domain = self.domain_of[i]
        if domain is not None:
            self.counts[domain] = self.counts.get(domain, 0) + delta


class SpreadCounter:
    """Replicas of one service per domain, over the nodes eligible for spread, and the
    smallest of those counts (eligible domains with no replica count as 0)."""

    __slots__ = ("domain_of", "eligible", "counts", "histogram", "min")

    def __init__(
        self, domain_of: list[str | None], eligible: list[bool], on_node: dict[int, int]
    ) -> None:
        self.domain_of = domain_of
        self.eligible = eligible
        self.counts: dict[str, int] = {}
        for i, domain in enumerate(domain_of):
            if eligible[i] and domain is not None:
                self.counts[domain] = 0
        for i, n in on_node.items():
            domain = domain_of[i]
            if eligible[i] and domain is not None:
                self.counts[domain] += n
        self.histogram: dict[int, int] = {}
        for n in self.counts.values():
            self.histogram[n] = self.histogram.get(n, 0) + 1
        self.min = min(self.counts.values(), default=0)

    def change(self, i: int, delta: int) -> None:
        """Node ``i`` gained (or lost) ``delta`` replicas of the service."""
        domain = self.domain_of[i]
        if domain is None or not self.eligible[i]:
            return
        old = self.counts[domain]
        new = old + delta
        self.counts[domain] = new
        hist = self.histogram
        hist[old] -= 1
        hist[new] = hist.get(new, 0) + 1
        if new < self.min:
            self.min = new
        else:
            while not hist.get(self.min):  # the last domain at the minimum moved up
                self.min += 1


class ClusterState:
    """Mutable bookkeeping for one ``schedule()`` call (nodes sorted by name)."""

    def __init__(self, nodes: Sequence[NodeView], running: Iterable[Running]) -> None:
        self.nodes = sorted(nodes, key=lambda n: n.name)
        self.index = {n.name: i for i, n in enumerate(self.nodes)}
        self.cpu_alloc = [n.cpu_millis for n in self.nodes]
        self.mem_alloc = [n.memory_bytes for n in self.nodes]
        self.cpu_used = [0] * len(self.nodes)
        self.mem_used = [0] * len(self.nodes)
        self.version = [0] * len(self.nodes)
        self.on_node: dict[str, dict[int, int]] = {}
        self.total: dict[str, int] = {}
        # Running replicas given as input, per node: the only candidates for preemption.
        self.running_on: dict[int, list[Running]] = {}
        self._domains: dict[str, list[str | None]] = {}
        self._eligible: dict[SelectorKey, list[bool]] = {}
        self._domain_counters: dict[tuple[str, str], DomainCounter] = {}
        self._spread_counters: dict[tuple[str, str, SelectorKey], SpreadCounter] = {}
        self._watchers: dict[str, list[DomainCounter | SpreadCounter]] = {}
        # What add() does for each replica, inline: no counter watches yet, and a pass
        # builds this over every running replica (4,000 calls of add() were most of it).
        index, running_on, on_node, total = self.index, self.running_on, self.on_node, self.total
        cpu_used, mem_used, version = self.cpu_used, self.mem_used, self.version
        for replica in running:
            i = index.get(replica.node)
            if i is None:
                continue  # a replica on a node that is gone: holds nothing we can place on
            running_on.setdefault(i, []).append(replica)
            cpu_used[i] += replica.cpu_millis
            mem_used[i] += replica.memory_bytes
            version[i] += 1
            per_node = on_node.setdefault(replica.service, {})
            per_node[i] = per_node.get(i, 0) + 1
            total[replica.service] = total.get(replica.service, 0) + 1

    def add(self, service: str, i: int, cpu: int, memory: int) -> None:
        """One replica of ``service`` now holds ``cpu`` and ``memory`` on node ``i``."""
        self._change(service, i, cpu, memory, 1)

    def remove(self, service: str, i: int, cpu: int, memory: int) -> None:
        """Undo :meth:`add` (an evicted replica)."""
        self._change(service, i, -cpu, -memory, -1)

    def _change(self, service: str, i: int, cpu: int, memory: int, delta: int) -> None:
        self.cpu_used[i] += cpu
        self.mem_used[i] += memory
        self.version[i] += 1
        per_node = self.on_node.setdefault(service, {})
        left = per_node.get(i, 0) + delta
        if left:
            per_node[i] = left
        else:
            del per_node[i]
        self.total[service] = self.total.get(service, 0) + delta
        for counter in self._watchers.get(service, ()):
            counter.change(i, delta)

    def count_on(self, service: str, i: int) -> int:
        """Replicas of ``service`` on node ``i``."""
        per_node = self.on_node.get(service)
        return per_node.get(i, 0) if per_node else 0

    def domains(self, key: str) -> list[str | None]:
        """Every node's value for topology key ``key`` (``node``: its name), by index."""
        found = self._domains.get(key)
        if found is None:
            if key == "node":
                found = [n.name for n in self.nodes]
            else:
                found = [n.labels.get(key) for n in self.nodes]
            self._domains[key] = found
        return found

    def spread_eligible(self, selector: SelectorKey) -> list[bool]:
        """Nodes whose domains count for spread: ready, not cordoned, nodeSelector
        matching (taints and free resources do not matter, as in kube-scheduler)."""
        found = self._eligible.get(selector)
        if found is None:
            found = [
                n.ready and not n.unschedulable and all(n.labels.get(k) == v for k, v in selector)
                for n in self.nodes
            ]
            self._eligible[selector] = found
        return found

    def domain_counter(self, service: str, key: str) -> DomainCounter:
        """Replicas of ``service`` per ``key`` domain, kept current from now on."""
        counter = self._domain_counters.get((service, key))
        if counter is None:
            counter = DomainCounter(self.domains(key), self.on_node.get(service, {}))
            self._domain_counters[(service, key)] = counter
            self._watchers.setdefault(service, []).append(counter)
        return counter

    def spread_counter(self, service: str, key: str, selector: SelectorKey) -> SpreadCounter:
        """Replicas of ``service`` per ``key`` domain over spread-eligible nodes."""
        counter = self._spread_counters.get((service, key, selector))
        if counter is None:
            counter = SpreadCounter(
                self.domains(key), self.spread_eligible(selector), self.on_node.get(service, {})
            )
            self._spread_counters[(service, key, selector)] = counter
            self._watchers.setdefault(service, []).append(counter)
        return counter

    def count_in_domain(self, service: str, key: str, i: int) -> int:
        """Replicas of ``service`` in node ``i``'s ``key`` domain (0 without the label)."""
        if key == "node":
            return self.count_on(service, i)
        domain = self.domains(key)[i]
        if domain is None:
            return 0
        return self.domain_counter(service, key).counts.get(domain, 0)
