"""NodePools' sync: ask each provider what it runs, decide (pure), call the provider, record.

A provider is the operator's executable (``spec.provider.command``), called with one verb
appended, a JSON request on its stdin and a JSON answer on its stdout:

* ``create``: ``{"pool", "name", "template": {"labels", "capacity": {"cpu", "memory"},
  "taints", "runtime"}}`` -> ``{"name", "endpoint", "address"}``: a Docker endpoint
  (``unix://``, ``tcp://``, ``ssh://``) that answers, and where its published ports are
  reached;
* ``delete``: ``{"pool", "name"}`` -> anything (exit 0: the node is gone; deleting a node
  it does not know is not an error);
* ``list``: ``{"pool"}`` -> ``[{"name", "endpoint", "address"}, ...]``, the nodes it runs
  for the pool.

A non-zero exit, a timeout or an answer that is not such JSON is a :class:`ProviderError`
naming the pool and the verb, with the end of its stderr; the pool's record keeps it
(``gitorch status``) and the next sync tries again. Nodes the provider lists that the
record lacks (a daemon killed between ``create`` and its record) are adopted; nodes the
record has that the provider no longer lists are forgotten (audited).

Every change is an audit event (``nodepool.scaled-up``, ``nodepool.draining``,
``nodepool.scaled-down``, ``nodepool.node-adopted``, ``nodepool.node-vanished``) with the
pool, the node, from and to, and why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gitorch.decide.cluster import Unplaced
from gitorch.decide.nodepools import (
    READY,
    PoolDecision,
    PoolInput,
    decide_pools,
)
from gitorch.errors import GitorchError
from gitorch.live.model import LiveState
from gitorch.manifests.model import DesiredState, NodePool
from gitorch.state import NodePoolRecord, RecordNotFound, StateStore

log = logging.getLogger("gitorch.nodepools")

#: Endpoints a provider may return (what the docker driver reaches).
ENDPOINT_SCHEMES = ("unix://", "tcp://", "ssh://")


class ProviderError(GitorchError):
    """A NodePool's provider command failed, timed out or answered something unusable."""


class ListingRefused(ProviderError):
    """Nodes a provider lists that its pool will not use (an endpoint its TLS cannot be
    spoken on): not adopted; ``record``: the pool's record with the rest of the listing."""

    def __init__(self, message: str, record: NodePoolRecord) -> None:
        super().__init__(message)
        self.record = record


@dataclass(frozen=True)
class CommandProvider:
    """The operator's executable for one pool."""

    pool: str
    command: tuple[str, ...]
    timeout: float = 120.0

    def _call(self, verb: str, request: Mapping[str, Any]) -> Any:
        argv = [*self.command, verb]
        try:
            # The operator's own command, from the repo they trust with their cluster
            # (as a Node's endpoint is), run without a shell.
            done = subprocess.run(  # noqa: S603
                argv,
                input=json.dumps(request),
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise ProviderError(
                f"NodePool {self.pool}: provider {self.command[0]!r} does not exist"
            ) from exc
        except PermissionError as exc:
            raise ProviderError(
                f"NodePool {self.pool}: provider {self.command[0]!r} is not executable"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise ProviderError(
                f"NodePool {self.pool}: provider {verb} took over {self.timeout:.0f}s"
            ) from exc
        except OSError as exc:
            raise ProviderError(f"NodePool {self.pool}: provider {verb} failed: {exc}") from exc
        if done.returncode != 0:
            tail = done.stderr.strip()[-500:] or "no output on stderr"
            raise ProviderError(
                f"NodePool {self.pool}: provider {verb} exited {done.returncode}: {tail}"
            )
        try:
            return json.loads(done.stdout) if done.stdout.strip() else None
        except json.JSONDecodeError as exc:
            raise ProviderError(
                f"NodePool {self.pool}: provider {verb} did not answer JSON: "
                f"{done.stdout.strip()[:200]!r}"
            ) from exc

    def create(self, name: str, template: Mapping[str, Any]) -> dict[str, Any]:
        answer = self._call("create", {"pool": self.pool, "name": name, "template": template})
        return self._node(answer, "create", name)

    def delete(self, name: str) -> None:
        self._call("delete", {"pool": self.pool, "name": name})

    def list(self) -> list[dict[str, Any]]:
        answer = self._call("list", {"pool": self.pool})
        if not isinstance(answer, list):
            raise ProviderError(f"NodePool {self.pool}: provider list did not answer a list")
        return [self._node(item, "list", None) for item in answer]

    def _node(self, answer: Any, verb: str, name: str | None) -> dict[str, Any]:
        if not isinstance(answer, dict):
            raise ProviderError(f"NodePool {self.pool}: provider {verb} did not answer an object")
        endpoint = answer.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(ENDPOINT_SCHEMES):
            raise ProviderError(
                f"NodePool {self.pool}: provider {verb} answered endpoint {endpoint!r}, "
                f"not a Docker endpoint ({', '.join(ENDPOINT_SCHEMES)})"
            )
        got = answer.get("name", name)
        if not isinstance(got, str) or (name is not None and got != name):
            raise ProviderError(
                f"NodePool {self.pool}: provider {verb} answered name {got!r}, asked {name!r}"
            )
        address = answer.get("address") or "127.0.0.1"
        return {"name": got, "endpoint": endpoint, "address": str(address)}


def template_of(pool: NodePool) -> dict[str, Any]:
    """What a provider's ``create`` gets: the pool's template as Git says it."""
    return dict(pool.canonical["spec"]["template"])


def tls_entry(pool: NodePool) -> dict[str, Any] | None:
    """The template's TLS as a pool's record keeps it with each node (None: no TLS)."""
    tls = pool.tls
    if tls is None:
        return None
    return {
        "caCert": tls.ca_cert,
        "clientCert": tls.client_cert,
        "clientKey": tls.client_key,
        "verify": tls.verify,
    }


def endpoint_problem(pool: NodePool, node: Mapping[str, Any], verb: str) -> str | None:
    """Why a node the provider answered cannot be used by ``pool``: a template that asks
    TLS is spoken to over TLS only, and TLS is for ``tcp://`` endpoints (a ``unix://``
    or ``ssh://`` endpoint would be reached without it)."""
    endpoint = str(node["endpoint"])
    if pool.tls is not None and not endpoint.startswith("tcp://"):
        return (
            f"NodePool {pool.name}: provider {verb} answered endpoint {endpoint!r} for "
            f"{node['name']}, but the template asks TLS (runtime.tls): only tcp:// "
            "endpoints are reached over TLS"
        )
    return None


def _node_entry(pool: NodePool, made: Mapping[str, Any], now: float) -> dict[str, Any]:
    """A node as its pool's record keeps it: what the provider answered and the template
    it was made from (its TLS too: the node is never spoken to without it)."""
    return {
        "tls": tls_entry(pool),
        "name": made["name"],
        "endpoint": made["endpoint"],
        "address": made["address"],
        "created_at": now,
        "state": READY,
        "labels": dict(pool.node_labels),
        "cpu": pool.capacity.cpu_millis,
        "memory": pool.capacity.memory_bytes,
        "taints": [{"key": t.key, "value": t.value or "", "effect": t.effect} for t in pool.taints],
        "low_since": None,
    }


@dataclass(frozen=True)
class PoolSync:
    """One pool's decision and what became of it."""

    decision: PoolDecision
    record: NodePoolRecord
    error: str = ""


ProviderFactory = Callable[[str, tuple[str, ...], float], CommandProvider]


class NodePoolScaler:
    """Lists, decides, acts and records, per pool (see the module docstring)."""

    def __init__(
        self,
        store: StateStore,
        *,
        clock: Callable[[], float] = time.time,
        provider: ProviderFactory = CommandProvider,
    ) -> None:
        self.store = store
        self._clock = clock
        self._provider = provider

    def sync(
        self,
        desired: DesiredState,
        live: LiveState,
        pending: Sequence[Unplaced],
        pass_nodes: frozenset[str],
    ) -> list[PoolSync]:
        records = {r.pool: r for r in self.store.list_node_pools()}
        if not desired.node_pools and not records:
            return []
        now = self._clock()
        listed: dict[str, str] = {}
        for name in sorted(set(desired.node_pools) | set(records)):
            pool = desired.node_pools.get(name)
            record = records.get(name) or NodePoolRecord(name, updated_at=now)
            if pool is not None:
                record = replace(
                    record,
                    provider={"command": list(pool.command), "timeout": pool.timeout_seconds},
                )
            try:
                record = self._reconcile_listing(record, pool, now)
                listed[name] = ""
            except ListingRefused as exc:
                record = exc.record
                listed[name] = exc.message
                log.warning("%s", exc.message)
            except ProviderError as exc:
                listed[name] = exc.message
                log.warning("%s", exc.message)
            records[name] = record
        decisions = decide_pools(PoolInput(desired, records, live, tuple(pending), pass_nodes, now))
        out: list[PoolSync] = []
        for decision in decisions:
            pool = desired.node_pools.get(decision.pool)
            out.append(self._act(decision, pool, listed.get(decision.pool, ""), now))
        return out

    # -- the provider's listing ------------------------------------------------------------

    def _reconcile_listing(
        self, record: NodePoolRecord, pool: NodePool | None, now: float
    ) -> NodePoolRecord:
        provider = self._for(record)
        if provider is None:
            return record
        running = {n["name"]: n for n in provider.list()}
        nodes = []
        for node in record.nodes:
            if node["name"] in running:
                nodes.append(node)
                continue
            log.warning("NodePool %s: node %s is gone (the provider no longer lists it)",
                        record.pool, node["name"])  # fmt: skip
            self._forget_node(node["name"])
            self.store.append_event(
                "nodepool.node-vanished",
                f"{record.pool}: node {node['name']} is no longer listed by the provider",
                data={"pool": record.pool, "node": node["name"]},
                at=now,
            )
        known = {n["name"] for n in record.nodes}
        refused: list[str] = []
        for name, found in sorted(running.items()):
            if name in known or pool is None:
                continue
            problem = endpoint_problem(pool, found, "list")
            if problem is not None:
                refused.append(problem)  # not adopted: never spoken to without TLS
                continue
            nodes.append(_node_entry(pool, found, now))
            self.store.append_event(
                "nodepool.node-adopted",
                f"{record.pool}: node {name} runs at the provider without a record: adopted",
                data={"pool": record.pool, "node": name, "endpoint": found["endpoint"]},
                at=now,
            )
        if len(nodes) != len(record.nodes) or not all(
            a is b for a, b in zip(nodes, record.nodes, strict=True)
        ):
            record = replace(record, nodes=tuple(nodes))
            self.store.save_node_pool(record)
        if refused:
            raise ListingRefused("; ".join(refused), record)
        return record

    def _for(self, record: NodePoolRecord) -> CommandProvider | None:
        command = record.provider.get("command")
        if not command:
            return None
        return self._provider(
            record.pool, tuple(command), float(record.provider.get("timeout") or 120.0)
        )

    # -- acting ----------------------------------------------------------------------------

    def _act(
        self, decision: PoolDecision, pool: NodePool | None, listing_error: str, now: float
    ) -> PoolSync:
        record = decision.record
        errors = [listing_error] if listing_error else []
        provider = self._for(record)
        last = dict(record.last)
        if decision.changed and provider is None:
            errors.append(f"NodePool {decision.pool}: no provider command to act with")
        elif decision.changed and provider is not None:
            record, done, failed = self._carry_out(decision, pool, provider, record, now)
            errors.extend(failed)
            if done:
                last = {
                    "at": now,
                    "action": done,
                    "reason": decision.reason,
                    "from": decision.nodes_before,
                    "to": len(record.nodes),
                }
        record = replace(record, last=last, error="; ".join(errors), updated_at=now)
        if pool is None and not record.nodes:
            self.store.forget_node_pool(record.pool)
        else:
            self.store.save_node_pool(record)
        return PoolSync(decision, record, record.error)

    def _carry_out(
        self,
        decision: PoolDecision,
        pool: NodePool | None,
        provider: CommandProvider,
        record: NodePoolRecord,
        now: float,
    ) -> tuple[NodePoolRecord, str, list[str]]:
        errors: list[str] = []
        done: list[str] = []
        name = decision.pool
        before = decision.nodes_before
        if decision.create and pool is not None:
            template = template_of(pool)
            made = 0
            for _ in range(decision.create):
                node = f"{name}-{secrets.token_hex(3)}"
                log.info("NodePool %s: creating node %s (%s)", name, node, decision.reason)
                try:
                    answer = provider.create(node, template)
                except ProviderError as exc:
                    errors.append(exc.message)
                    log.error("%s", exc.message)
                    break
                problem = endpoint_problem(pool, answer, "create")
                if problem is not None:
                    # Made, but not usable: given back, and never spoken to in plain text.
                    errors.append(problem)
                    log.error("%s", problem)
                    try:
                        provider.delete(node)
                    except ProviderError as exc:
                        errors.append(exc.message)
                    break
                record = replace(record, nodes=(*record.nodes, _node_entry(pool, answer, now)))
                self.store.save_node_pool(record)  # a crash now loses no node
                made += 1
            if made:
                done.append(f"create {made}")
                self.store.append_event(
                    "nodepool.scaled-up",
                    f"{name}: {before} -> {before + made} nodes ({decision.reason})",
                    data={
                        "pool": name,
                        "from": before,
                        "to": before + made,
                        "nodes": [n["name"] for n in record.nodes[-made:]],
                        "reason": decision.reason,
                        "unfit": list(decision.unfit),
                    },
                    at=now,
                )
        if decision.drain is not None:
            # A node never observed ran nothing: it is deleted once seen empty.
            with contextlib.suppress(RecordNotFound):
                self.store.set_draining(decision.drain, True)
            done.append(f"drain {decision.drain}")
            log.info("NodePool %s: draining %s (%s)", name, decision.drain, decision.reason)
            self.store.append_event(
                "nodepool.draining",
                f"{name}: draining {decision.drain} ({decision.reason})",
                data={"pool": name, "node": decision.drain, "reason": decision.reason},
                at=now,
            )
        deleted: list[str] = []
        for node in decision.delete:
            log.info("NodePool %s: deleting %s (%s)", name, node, decision.reason)
            try:
                provider.delete(node)
            except ProviderError as exc:
                # Kept in the record (draining): the next sync deletes it again.
                errors.append(exc.message)
                log.error("%s", exc.message)
                continue
            record = replace(record, nodes=tuple(n for n in record.nodes if n["name"] != node))
            self.store.save_node_pool(record)
            self._forget_node(node)
            deleted.append(node)
        if deleted:
            done.append(f"delete {', '.join(deleted)}")
            after = before - len(deleted)
            self.store.append_event(
                "nodepool.scaled-down",
                f"{name}: {before} -> {after} nodes ({decision.reason})",
                data={
                    "pool": name,
                    "from": before,
                    "to": after,
                    "nodes": deleted,
                    "reason": decision.reason,
                },
                at=now,
            )
        return record, "; ".join(done), errors

    def _forget_node(self, node: str) -> None:
        """A deleted node leaves the store's node records (and its drain flag)."""
        self.store.remove_node(node)
