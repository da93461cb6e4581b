"""The soak's commits: each one made in the work tree and pushed, and the model of what
was committed, which the checks ask (the surge bound of a service now, whether a replica
traces to a commit, which versions answer 5xx on purpose).

Every commit is also loaded with gitorch's own manifest loader: the model must agree
with it (a valid shop loads, an invalid one does not), and the template digests the
trace check compares replicas with come from there.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from soak_load import Targets
from soak_plan import Planned
from soak_rig import GitRemote, Journal
from soak_shop import ERRORS, Change, Ports, Shop, diff_files, files_of, next_change

from gitorch.manifests.loader import ManifestLoader
from gitorch.runtime.base import LABEL_REVISION, LABEL_SERVICE, LABEL_SPEC_DIGEST

#: Surge bounds consider every spec the service had within this many seconds (a change
#: the daemon has not finished applying is still "in force").
SURGE_WINDOW = 150.0


@dataclass(frozen=True)
class SoakFile:
    path: str
    blob_id: str
    data: bytes


@dataclass
class Committed:
    """One commit the soak pushed."""

    index: int
    sha: str
    kind: str
    message: str
    shop: Shop  # as committed (an invalid or refused one included)
    effective: Shop  # what gitorch should apply: the newest valid shop
    at: float  # monotonic
    digests: dict[str, str]  # service -> template digest of the effective shop


class Committer:
    """Makes the plan's commits and keeps the model of what was committed."""

    def __init__(
        self,
        remote: GitRemote,
        journal: Journal,
        targets: Targets,
        ports: Ports,
        daemon_rev: Callable[[], str | None],
    ) -> None:
        self.remote = remote
        self.journal = journal
        self.targets = targets
        self.ports = ports
        self.daemon_rev = daemon_rev
        self.history: list[Committed] = []
        self.counts: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._files: dict[str, str] = {}
        self._digest_versions: dict[tuple[str, str], str] = {}
        self._bad: set[str] = set()

    # -- making commits -----------------------------------------------------------------------

    def planned(self, planned: Planned) -> Committed:
        with self._lock:
            change = next_change(planned.kind, planned.draws, self.shops(), self.ports)
            return self.make(change)

    def make(self, change: Change) -> Committed:
        with self._lock:
            previous = self.history[-1] if self.history else None
            if change.revert:
                sha = self.remote.revert()
                files = self.remote.files_at(sha)
                expected = files_of(change.shop)
                if files != expected:
                    raise RuntimeError(f"the soak's model disagrees with git revert at {sha}")
            else:
                files = files_of(change.shop)
                sha = self.remote.commit(diff_files(self._files, files), change.message)
            self._files = files
            digests = self._check(sha, files, change.shop)
            if change.shop.valid:
                effective, eff_digests = change.shop, digests
            else:
                assert previous is not None, "the first commit must be valid"
                effective, eff_digests = previous.effective, previous.digests
            done = Committed(
                len(self.history),
                sha,
                change.kind,
                change.message,
                change.shop,
                effective,
                time.monotonic(),
                eff_digests,
            )
            self.history.append(done)
            self.counts[change.kind] += 1
            for svc in change.shop.services:
                if svc.fail_mode == ERRORS:
                    self._bad.add(svc.version_label)
            self._expect(previous.effective if previous else None, effective, done.index)
            self.journal.note(
                "commit",
                f"{sha[:10]} {change.kind}: {change.message}",
                sha=sha,
                index=done.index,
                valid=change.shop.valid,
            )
            self.remote.push()
            return done

    def _check(self, sha: str, files: dict[str, str], shop: Shop) -> dict[str, str]:
        """Load the commit with gitorch's own loader: the model must agree with it (a
        valid shop loads, an invalid one does not); the template digests of its services."""
        loaded = ManifestLoader().load(
            [
                SoakFile(p, hashlib.sha1(t.encode()).hexdigest(), t.encode())
                for p, t in sorted(files.items())
            ],
            revision=sha,
        )
        if shop.corrupt is not None:
            if loaded.ok:
                raise RuntimeError(f"the soak's invalid commit {sha} ({shop.corrupt}) loads")
            return {}
        if not loaded.ok or loaded.state is None:
            problems = "; ".join(str(d) for d in loaded.diagnostics[:3])
            raise RuntimeError(f"the soak's commit {sha} does not load: {problems}")
        digests = {n: s.template_digest for n, s in loaded.state.services.items()}
        for svc in shop.services:
            if svc.name in digests:
                self._digest_versions[(svc.name, digests[svc.name])] = svc.version_label
        return digests

    def _expect(self, old: Shop | None, new: Shop, index: int) -> None:
        before = {s.name: s for s in old.services} if old else {}
        for svc in new.services:
            if svc.port is None:
                continue
            was = before.get(svc.name)
            if was is None or was.port != svc.port:
                self.targets.expect(svc.name, svc.port, index, up=old is None)
        now = {s.name for s in new.services}
        for name, svc in before.items():
            if name not in now and svc.port is not None:
                self.targets.leave(name)

    # -- what the model says ------------------------------------------------------------------

    def shops(self) -> list[Shop]:
        return [c.shop for c in self.history]

    @property
    def head(self) -> Committed:
        return self.history[-1]

    def index_of(self, sha: str | None) -> int | None:
        if sha is None:
            return None
        with self._lock:
            for c in reversed(self.history):
                if c.sha == sha:
                    return c.index
        return None

    def applied_index(self) -> int:
        index = self.index_of(self.daemon_rev())
        return -1 if index is None else index

    def bad_versions(self) -> set[str]:
        with self._lock:
            return set(self._bad)

    def introduced(self, service: str, version: str) -> list[float]:
        """When (monotonic) each commit made ``version`` the effective one of ``service``
        (again, after a revert or a commit that re-made the same label)."""
        with self._lock:
            history = list(self.history)
        starts = []
        before: str | None = None
        for c in history:
            svc = c.effective.service(service)
            now = svc.version_label if svc is not None else None
            if now == version and before != version:
                starts.append(c.at)
            before = now
        return starts

    def surge_bound(self, service: str, now: float) -> int | None:
        """The most replicas ``service`` may run now (see SURGE_WINDOW)."""
        with self._lock:
            history = list(self.history)
        bounds = []
        for c in reversed(history):
            svc = c.effective.service(service)
            if svc is not None:
                bounds.append(svc.surge_bound())
            if c.at < now - SURGE_WINDOW:
                break
        return max(bounds) if bounds else None

    def trace(self, service: str, labels: dict[str, str], env: dict[str, str]) -> str | None:
        """Why a replica with these labels and this environment does not trace to a commit
        (None when it does)."""
        revision = labels.get(LABEL_REVISION, "")
        digest = labels.get(LABEL_SPEC_DIGEST, "")
        if labels.get(LABEL_SERVICE) != service:
            return f"labelled service {labels.get(LABEL_SERVICE)!r}, named {service!r}"
        index = self.index_of(revision)
        if index is None:
            return f"revision {revision[:12]!r} is no commit the soak pushed"
        with self._lock:
            history = self.history[: index + 1]
        if not history[-1].shop.valid:
            return f"revision {revision[:12]} was invalid or refused: it must never run"
        if not any(c.digests.get(service) == digest for c in history):
            return (
                f"template {digest[:12]} is no template {service} had at {revision[:12]} or before"
            )
        version = self._digest_versions.get((service, digest))
        if version is not None and env.get("VERSION") != version:
            return f"runs VERSION={env.get('VERSION')!r}, its template says {version!r}"
        return None
