"""The etcd backend: the state of one gitorch cluster under ``/gitorch/NAMESPACE/``.

Every record is one key holding JSON (the repositories in :mod:`.repos` say which); a
transaction is one etcd ``Txn``:

* writes inside ``with backend.transaction():`` are buffered and sent together when the
  outermost block ends (an inner block that raises drops its own writes only);
* reads inside a transaction see its own writes first, and every key (or range) read is
  remembered with the revision it had: the ``Txn`` is conditioned on none of them having
  changed since (optimistic concurrency, like etcd's STM). A conflict writes nothing and
  raises :class:`~gitorch.state.errors.StateConflict`; a repository's own small write
  (outside a caller's transaction) is simply tried again;
* while a daemon leads, every ``Txn`` is also conditioned on its leadership: the election
  key must still be the one it created (its create revision, :class:`Fence`). A deposed
  leader (paused, partitioned, its lease expired) therefore cannot change anything: its
  write fails as a whole and raises :class:`~gitorch.state.errors.NotLeader`.

Reads outside a transaction are linearizable (they need a quorum); a store whose etcd has
no quorum raises :class:`~gitorch.state.errors.StateUnavailable`.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gitorch.errors import StateCorrupt, StateError
from gitorch.state.errors import NotLeader, StateConflict, StateReadOnly
from gitorch.state.etcd.client import EtcdClient, KeyValue, Trace, b64, prefix_end
from gitorch.state.location import EtcdLocation
from gitorch.state.repositories import StateSnapshot

T = TypeVar("T")
Clock = Callable[[], float]

#: The data model version this code writes (``meta/schema``). Like SQLite's migrations, a
#: change is a new version with a step in :data:`MIGRATIONS`, never an edit.
SCHEMA_VERSION = 1

#: etcd refuses a Txn of more operations than its ``--max-txn-ops`` (128 by default).
MAX_TXN_OPS = 128

#: Records per transaction of a restore (each is at most 3 keys: within MAX_TXN_OPS).
RESTORE_BATCH = 40

#: Attempts of a repository's own write that keeps meeting concurrent writers.
CONFLICT_RETRIES = 50

SCHEMA_KEY = "meta/schema"
CLUSTER_KEY = "meta/cluster"
#: The key of secret values' digests (gitorch.secrets), one per namespace: every daemon,
#: on whichever host, must digest a secret alike, or a new leader would see every secret
#: as changed and roll every service that has one.
DIGEST_KEY = "meta/secret-digest-key"


@dataclass(frozen=True)
class Fence:
    """A leader's proof: the election key it holds and the revision that created it."""

    key: str  # the full key (namespace prefix included)
    create_revision: int
    holder: str


FenceProvider = Callable[[], Fence]


@dataclass
class _Pending:
    """One thread's open transaction."""

    writes: dict[str, bytes | None] = field(default_factory=dict)  # None: delete
    reads: dict[str, int] = field(default_factory=dict)  # key -> mod revision seen
    ranges: dict[str, int] = field(default_factory=dict)  # prefix -> revision read at
    depth: int = 0


def dump(value: Any) -> bytes:
    """Canonical JSON (sorted keys, compact), as the SQLite backend stores its columns."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load(raw: bytes) -> Any:
    return json.loads(raw) if raw else None


class EtcdBackend:
    """The repositories of one namespace (see the module docstring)."""

    def __init__(
        self,
        location: EtcdLocation,
        *,
        readonly: bool = False,
        clock: Clock = time.time,
        client: EtcdClient | None = None,
    ) -> None:
        from gitorch.state.etcd import repos

        self.location = location
        self.prefix = location.prefix
        self.readonly = readonly
        self.clock = clock
        self.client = client or EtcdClient(location)
        self._local = threading.local()
        self._fence: FenceProvider | None = None
        self._closed = False
        self.schema_version = self._open()
        self.revisions = repos.Revisions(self)
        self.rollouts = repos.Rollouts(self)
        self.inventory = repos.Inventory(self)
        self.ports = repos.Ports(self)
        self.nodes = repos.Nodes(self)
        self.backoff = repos.Backoff(self)
        self.analysis = repos.Analysis(self)
        self.traffic = repos.Traffic(self)
        self.autoscalers = repos.Autoscalers(self)
        self.node_pools = repos.NodePools(self)
        self.volumes = repos.Volumes(self)
        self.audit = repos.Audit(self)

    def _open(self) -> int:
        """The namespace's data model version, created (or migrated) unless read-only."""
        found = self.get(SCHEMA_KEY)
        if found is None:
            if self.readonly:
                raise StateError(
                    f"no gitorch state in {self.describe()}",
                    detail=("gitorch apply, gitorch daemon or gitorch state migrate creates it",),
                )
            self.client.txn(
                [{"key": b64(self.full(SCHEMA_KEY)), "target": "CREATE", "create_revision": 0}],
                [{"request_put": {"key": b64(self.full(SCHEMA_KEY)), "value": b64(dump(1))}}],
            )
            found = self.get(SCHEMA_KEY)
        version = int(found)
        if version > SCHEMA_VERSION:
            raise StateCorrupt(
                f"the state in {self.describe()} has data model version {version}, "
                f"but this gitorch only knows versions up to {SCHEMA_VERSION}",
                detail=("it was written by a newer gitorch; upgrade gitorch to use it",),
            )
        return version

    def describe(self) -> str:
        return self.location.url()

    def close(self) -> None:
        self._closed = True

    def set_trace(self, callback: Trace | None) -> None:
        self.client.set_trace(callback)

    def now(self, at: float | None) -> float:
        return self.clock() if at is None else at

    def full(self, key: str) -> str:
        return self.prefix + key

    # ----------------------------------------------------------------- leadership

    def fence_with(self, provider: FenceProvider | None) -> None:
        """Condition every write on ``provider()`` (which raises NotLeader when this
        daemon does not lead); None: writes are not fenced (the CLI, tests)."""
        self._fence = provider

    # ----------------------------------------------------------------- transactions

    def _pending(self) -> _Pending | None:
        pending: _Pending | None = getattr(self._local, "pending", None)
        return pending if pending is not None and pending.depth > 0 else None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._check_open()
        pending: _Pending | None = getattr(self._local, "pending", None)
        if pending is None or pending.depth == 0:
            pending = _Pending()
            self._local.pending = pending
        saved = (dict(pending.writes), dict(pending.reads), dict(pending.ranges))
        pending.depth += 1
        try:
            yield
        except BaseException:
            pending.depth -= 1
            pending.writes, pending.reads, pending.ranges = saved
            raise
        pending.depth -= 1
        if pending.depth == 0:
            self._local.pending = None
            self._commit(pending)

    def atomic(self, work: Callable[[], T]) -> T:
        """``work()`` in a transaction; alone (not inside a caller's transaction) it is
        tried again when a concurrent writer changed what it read."""
        if self._pending() is not None:
            return work()
        for attempt in range(CONFLICT_RETRIES):
            try:
                with self.transaction():
                    return work()
            except StateConflict:
                if attempt == CONFLICT_RETRIES - 1:
                    raise
                time.sleep(random.uniform(0.001, 0.005 * (attempt + 1)))
        raise AssertionError("unreachable")

    def _commit(self, pending: _Pending) -> None:
        if not pending.writes:
            return
        if self.readonly:
            raise StateReadOnly(f"the state store {self.describe()} was opened read-only")
        fence = self._fence() if self._fence is not None else None
        compare: list[dict[str, Any]] = []
        failure: list[dict[str, Any]] = []
        if fence is not None:
            compare.append(
                {
                    "key": b64(fence.key),
                    "target": "CREATE",
                    "result": "EQUAL",
                    "create_revision": fence.create_revision,
                }
            )
            failure.append({"request_range": {"key": b64(fence.key)}})
        for key, revision in pending.reads.items():
            compare.append(
                {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision}
            )
        for start, revision in pending.ranges.items():
            compare.append(
                {
                    "key": b64(start),
                    "range_end": b64(prefix_end(start)),
                    "target": "MOD",
                    "result": "LESS",
                    "mod_revision": revision + 1,
                }
            )
        success = [
            {"request_put": {"key": b64(key), "value": b64(value)}}
            if value is not None
            else {"request_delete_range": {"key": b64(key)}}
            for key, value in sorted(pending.writes.items())
        ]
        if len(success) > MAX_TXN_OPS:
            raise StateError(
                f"one transaction of {len(success)} writes is more than etcd takes "
                f"({MAX_TXN_OPS}, its --max-txn-ops)"
            )
        result = self.client.txn(compare, success, failure)
        if result.succeeded:
            return
        if fence is not None:
            holders = result.ranges()[0] if result.ranges() else []
            if not holders or holders[0].create_revision != fence.create_revision:
                leader = _holder_name(holders[0].value) if holders else None
                raise NotLeader(
                    f"{fence.holder} no longer leads"
                    + (f" ({leader} does)" if leader else " (no daemon leads)")
                    + ": nothing was written",
                    leader=leader,
                )
        raise StateConflict(
            f"the state in {self.describe()} changed during a transaction: nothing was written"
        )

    # ----------------------------------------------------------------- reads

    def _check_open(self) -> None:
        if self._closed:
            raise StateError(f"the state store {self.describe()} is closed")

    def get(self, key: str) -> Any:
        """The JSON value of ``key`` (None when absent); inside a transaction its own
        writes first, and the key joins the transaction's condition."""
        return self._read(key, condition=True)

    def peek(self, key: str) -> Any:
        """Like :meth:`get`, but the key does not join the transaction's condition: for a
        value the transaction reports and does not decide on (a concurrent change of it
        must not fail the write)."""
        return self._read(key, condition=False)

    def _read(self, key: str, *, condition: bool) -> Any:
        self._check_open()
        full = self.full(key)
        pending = self._pending()
        if pending is not None and full in pending.writes:
            written = pending.writes[full]
            return None if written is None else load(written)
        kvs, _ = self.client.range(full)
        if pending is not None and condition:
            pending.reads.setdefault(full, kvs[0].mod_revision if kvs else 0)
        return load(kvs[0].value) if kvs else None

    def revision_of(self, key: str) -> int:
        """The revision that last changed ``key`` (0: absent), read without its value: a
        large value polled for changes is read only when it changed."""
        self._check_open()
        found, _ = self.client.range(self.full(key), keys_only=True)
        return found[0].mod_revision if found else 0

    def wait_for_change(self, key: str, after: int, wait: float) -> bool:
        """Block until ``key`` changes above revision ``after`` (True) or ``wait``
        seconds pass (False); see :meth:`EtcdClient.wait_for_change`."""
        self._check_open()
        return self.client.wait_for_change(self.full(key), after, wait)

    def range(self, prefix: str) -> list[tuple[str, Any]]:
        """Every key under ``prefix`` (relative, sorted) with its JSON value; inside a
        transaction with its own writes applied, and the range joins its condition."""
        self._check_open()
        full = self.full(prefix)
        kvs, revision = self.client.range(full, prefix=True)
        found = {kv.key: kv.value for kv in kvs}
        pending = self._pending()
        if pending is not None:
            pending.ranges.setdefault(full, revision)
            for key, value in pending.writes.items():
                if key.startswith(full):
                    if value is None:
                        found.pop(key, None)
                    else:
                        found[key] = value
        cut = len(self.prefix)
        return [(key[cut:], load(found[key])) for key in sorted(found)]

    def read_many(self, *keys: tuple[str, bool]) -> list[list[tuple[str, Any]]]:
        """Several keys or prefixes (``(key, is_prefix)``) read at one revision in one
        request (outside a transaction; inside one, each as :meth:`get`/:meth:`range`)."""
        self._check_open()
        if self._pending() is not None:
            results: list[list[tuple[str, Any]]] = []
            for key, is_prefix in keys:
                if is_prefix:
                    results.append(self.range(key))
                else:
                    value = self.get(key)
                    results.append([] if value is None else [(key, value)])
            return results
        ops = []
        for key, is_prefix in keys:
            request: dict[str, Any] = {"key": b64(self.full(key))}
            if is_prefix:
                request["range_end"] = b64(prefix_end(self.full(key)))
            ops.append({"request_range": request})
        answer = self.client.txn([], ops)
        cut = len(self.prefix)
        return [[(kv.key[cut:], load(kv.value)) for kv in kvs] for kvs in answer.ranges()]

    def scan(
        self, prefix: str, *, descending: bool = False, page: int | None = 20
    ) -> Iterator[Any]:
        """The values under ``prefix`` in key order (or reversed). ``page``: read that many
        first, then twice as many each time (a search that stops early reads little);
        None: everything in one request."""
        self._check_open()
        if self._pending() is not None or page is None:
            items = self.range(prefix)
            yield from (value for _, value in (reversed(items) if descending else items))
            return
        full = self.full(prefix)
        start, end = full, prefix_end(full)
        while True:
            request: dict[str, Any] = {
                "key": b64(start),
                "range_end": b64(end),
                "limit": page,
                "sort_order": "DESCEND" if descending else "ASCEND",
                "sort_target": "KEY",
            }
            kvs = self._range_raw(request)
            for kv in kvs:
                yield load(kv.value)
            if len(kvs) < page:
                return
            if descending:
                end = kvs[-1].key
            else:
                start = kvs[-1].key + "\0"
            page = min(page * 2, 1000)

    def _range_raw(self, request: dict[str, Any]) -> list[KeyValue]:
        answer = self.client.txn([], [{"request_range": request}])
        return answer.ranges()[0]

    # ----------------------------------------------------------------- writes

    def _writing(self) -> _Pending:
        pending = self._pending()
        if pending is None:
            raise StateError("an etcd write outside a transaction (a bug in gitorch)")
        if self.readonly:
            raise StateReadOnly(f"the state store {self.describe()} was opened read-only")
        return pending

    def put(self, key: str, value: Any) -> None:
        self._writing().writes[self.full(key)] = dump(value)

    def delete(self, key: str) -> None:
        self._writing().writes[self.full(key)] = None

    def next_id(self, sequence: str) -> int:
        """The next id of ``sequence`` (1, 2, ...), taken inside the transaction."""
        key = f"seq/{sequence}"
        value = int(self.get(key) or 0) + 1
        self.put(key, value)
        return value

    def secret_digest_key(self, *, create: bool) -> bytes | None:
        """The namespace's key of secret digests (made once, by the first daemon or apply
        that needs it: whoever creates it first wins, the others read theirs); None when
        there is none and ``create`` is False."""
        import secrets

        found = self.get(DIGEST_KEY)
        if found is None and create:
            full = self.full(DIGEST_KEY)
            self.client.txn(
                [{"key": b64(full), "target": "CREATE", "create_revision": 0}],
                [{"request_put": {"key": b64(full), "value": b64(dump(secrets.token_hex(32)))}}],
            )
            found = self.get(DIGEST_KEY)
        return None if found is None else bytes.fromhex(str(found))

    def restore_secret_digest_key(self, key: bytes) -> None:
        """Make ``key`` the namespace's key of secret digests (``gitorch state migrate``:
        the digests in the copied records were made with it, and a new key would make
        every secret look rotated, rolling every service that uses one)."""
        with self.transaction():
            self.put(DIGEST_KEY, key.hex())

    def cluster_name(self, create: Callable[[], str] | None = None) -> str | None:
        """The namespace's cluster identity (the replicas' cluster label); ``create`` makes
        one when there is none yet (the first daemon or apply on a new namespace)."""
        found = self.get(CLUSTER_KEY)
        if found is not None or create is None:
            return None if found is None else str(found)
        full = self.full(CLUSTER_KEY)
        self.client.txn(
            [{"key": b64(full), "target": "CREATE", "create_revision": 0}],
            [{"request_put": {"key": b64(full), "value": b64(dump(create()))}}],
        )
        return str(self.get(CLUSTER_KEY))

    def set_cluster_name(self, name: str) -> None:
        """Give the namespace ``name`` as its identity (``gitorch state migrate``)."""
        with self.transaction():
            self.put(CLUSTER_KEY, name)

    def restore(self, snapshot: StateSnapshot) -> None:
        """Every record of ``snapshot``, ids kept, in transactions of at most
        :data:`RESTORE_BATCH` records (an empty namespace is filled: nothing to conflict)."""
        from gitorch.state.etcd.repos import AUDIT_HEAD

        steps: list[tuple[Callable[[list[Any]], None], list[Any]]] = [
            (self.revisions.restore, snapshot.revisions),
            (self.rollouts.restore, snapshot.rollouts),
            (self.inventory.restore, snapshot.inventory),
            (self.ports.restore, snapshot.ports),
            (self.nodes.restore, snapshot.nodes),
            (self.backoff.restore, snapshot.backoff),
            (lambda runs: self.analysis.restore(runs, []), snapshot.analysis_runs),
            (lambda found: self.analysis.restore([], found), snapshot.measurements),
            (self.audit.restore, snapshot.audit),
            (self.volumes.restore, snapshot.volumes),
        ]
        for write, records in steps:
            for start in range(0, len(records), RESTORE_BATCH):
                with self.transaction():
                    write(records[start : start + RESTORE_BATCH])
        self.traffic.replace(snapshot.traffic)
        for autoscaler in snapshot.autoscalers:
            self.autoscalers.save(autoscaler)
        for pool in snapshot.node_pools:
            self.node_pools.save(pool)
        with self.transaction():
            for sequence, records in (
                ("revisions", snapshot.revisions),
                ("analysis-runs", snapshot.analysis_runs),
                ("measurements", snapshot.measurements),
                ("audit", snapshot.audit),
            ):
                self.put(f"seq/{sequence}", max((r.id for r in records), default=0))
            chained = [e for e in snapshot.audit if e.hash is not None]
            if chained:
                head = max(chained, key=lambda e: e.id)
                self.put(AUDIT_HEAD, {"id": head.id, "hash": head.hash})
            if snapshot.cluster:
                self.put(CLUSTER_KEY, snapshot.cluster)


def _holder_name(raw: bytes) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return str(data.get("name")) if isinstance(data, dict) and data.get("name") else None
