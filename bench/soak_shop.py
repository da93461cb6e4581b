"""The soak's shop: the example services as a model, the commits that change it, and the
manifests each commit writes (pure: no process, no Git).

The shop is ``examples/repo`` (api: RollingUpdate, web: Canary with an analysis and a
manual pause, worker: Recreate), read from its YAML files and adapted for a soak: the apps
run from their absolute paths, endpoints listen on free ports (two soaks, or a soak and
the tests, must not fight over 8000/8001), the canary's pauses and analysis are shorter so
that a soak of minutes sees many rollouts (and its latency bound looser: see
``ANALYSIS_MAX_P99``), progress deadlines are shorter for the same reason, and every request takes ``SLOW_MS`` milliseconds so that replicas always have
requests in flight when they are drained. ``--services K`` adds generated services of the
api app (RollingUpdate or Canary) up to K.

A commit is a pure function of the model and a few uniform draws, so a seed decides the
whole sequence of commits whatever the cluster does meanwhile.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_REPO = REPO / "examples" / "repo"
APPS = REPO / "examples" / "apps"

#: What every request costs in a replica (SLOW_MS): keeps requests in flight at a drain.
SLOW_MS = 40
#: The canary of the soak: the example's steps, with pauses and analysis made shorter.
CANARY_PAUSE = "4s"
ANALYSIS_INTERVAL = "3s"
ANALYSIS_COUNT = 2
ANALYSIS_MIN_REQUESTS = 10
#: The soak commits no slow version: its canaries are judged on 5xx. The example's 500 ms
#: p99 bound failed good versions on a machine loaded to 19 (the soak's own load and
#: other test suites sharing its 2 cores), which is what that bound is for, not the soak.
ANALYSIS_MAX_P99 = "5s"
#: Progress deadlines (seconds): long enough for a start on a loaded 2-core machine.
ROLLING_DEADLINE = 45
CANARY_DEADLINE = 60
RECREATE_DEADLINE = 45
MAX_REPLICAS = 4
#: The counter (one writer of a ReadWriteOnce volume) beats on in its volume this long
#: after SIGTERM, so that a second writer started before the first has exited is caught
#: (the app writes conflicts.log, which the soak's checks read).
COUNTER_LINGER_MS = 500

GOOD = ""
NEVER_READY = "unhealthy"
ERRORS = "errors"

CORRUPTIONS = ("unknown-field", "bad-type", "yaml-syntax", "unknown-dependency", "port-twice")


@dataclass(frozen=True)
class Svc:
    """One service of the shop as the soak models it."""

    name: str
    app: str  # the example app it runs: api | web | worker
    strategy: str  # RollingUpdate | Canary | Recreate
    replicas: int
    version: int = 1
    fail_mode: str = GOOD  # GOOD | NEVER_READY | ERRORS
    port: int | None = None  # the expose port (None: not exposed)
    core: bool = False  # one of the example's three (never removed)

    @property
    def good(self) -> bool:
        return self.fail_mode == GOOD

    @property
    def version_label(self) -> str:
        """What the app answers in ``X-App-Version`` (the VERSION env)."""
        return f"{self.version}{'-' + self.fail_mode if self.fail_mode else ''}"

    def surge_bound(self) -> int:
        """Most replicas the strategy may run at once for this spec (gitorch's rules:
        RollingUpdate ``replicas + maxSurge`` in service (the shop's is 1) and as many
        terminating beside their replacements (Kubernetes' surge semantics); Canary: the
        full stable set beside the new one during promotion; Recreate: never more than
        ``replicas``)."""
        if self.strategy == "Canary":
            return 2 * self.replicas
        if self.strategy == "Recreate" or self.app == "counter":
            return self.replicas  # the counter: a ReadWriteOnce volume, one writer
        return self.replicas + 2


@dataclass(frozen=True)
class Shop:
    """The whole desired state of one commit."""

    services: tuple[Svc, ...]
    corrupt: str | None = None  # an invalid-manifest mutation on top (CORRUPTIONS)
    mass_prune: bool = False  # most manifests deleted: the guard must refuse it
    images: bool = False  # the Docker driver: the example images instead of commands

    def service(self, name: str) -> Svc | None:
        return next((s for s in self.services if s.name == name), None)

    def with_service(self, svc: Svc) -> Shop:
        others = [s for s in self.services if s.name != svc.name]
        return replace(self, services=tuple(sorted([*others, svc], key=lambda s: s.name)))

    def without(self, name: str) -> Shop:
        return replace(self, services=tuple(s for s in self.services if s.name != name))

    @property
    def valid(self) -> bool:
        """Applied by gitorch (not invalid, not refused by the mass-prune guard)."""
        return self.corrupt is None and not self.mass_prune

    def clean(self) -> Shop:
        """This state without the one-commit mutations (what the next commit builds on)."""
        return replace(self, corrupt=None, mass_prune=False)


@dataclass(frozen=True)
class Change:
    """One commit the soak makes: what it is, the new model, and the files it writes."""

    kind: str
    message: str
    shop: Shop
    files: dict[str, str | None]  # path -> text (None: delete)
    revert: bool = False  # made with `git revert HEAD` (files unused)
    service: str | None = None  # the service it is about, when one


@dataclass
class Ports:
    """Endpoint ports of the core services and of every extra the soak may add."""

    api: int
    web: int
    extras: dict[str, int] = field(default_factory=dict)
    counter: bool = False  # the counter (ReadWriteOnce volume) is in the shop


def extra_names(count: int) -> list[str]:
    return [f"extra{n}" for n in range(1, count + 1)]


def initial_shop(ports: Ports, services: int, images: bool = False) -> Shop:
    """The example shop, plus generated services of the api app up to ``services``
    (``images``: run by the Docker driver, from examples/images/build.sh's images)."""
    core = [
        Svc("api", "api", "RollingUpdate", 2, port=ports.api, core=True),
        Svc("web", "web", "Canary", 3, port=ports.web, core=True),
        Svc("worker", "worker", "Recreate", 1, core=True),
    ]
    if ports.counter:
        # Not under load: one ReadWriteOnce writer means a gap at each of its rollouts,
        # by design. Its rollouts and kills are what the RWO check watches.
        core.append(Svc("counter", "counter", "RollingUpdate", 1, core=True))
    extras = []
    for n, name in enumerate(sorted(ports.extras, key=lambda e: int(e[5:]))):
        if len(core) + len(extras) >= services:
            break
        strategy = "Canary" if n % 3 == 2 else "RollingUpdate"
        extras.append(Svc(name, "api", strategy, 2, port=ports.extras[name]))
    return Shop(tuple(sorted(core + extras, key=lambda s: s.name)), images=images)


# -- rendering -----------------------------------------------------------------------------


def _base_documents() -> dict[str, dict[str, Any]]:
    docs = {}
    for app in ("api", "web", "worker", "counter"):
        text = (EXAMPLE_REPO / f"{app}.yaml").read_text(encoding="utf-8")
        for doc in yaml.safe_load_all(text):
            docs[app if doc["kind"] == "Service" else f"{app}:{doc['kind']}"] = doc
    return docs


_BASE = _base_documents()


def _canary_strategy() -> dict[str, Any]:
    strategy = copy.deepcopy(_BASE["web"]["spec"]["strategy"])
    steps = strategy["canary"]["steps"]
    for step in steps:
        if "pause" in step and step["pause"].get("duration"):
            step["pause"]["duration"] = CANARY_PAUSE
        if "analysis" in step:
            step["analysis"].update(
                interval=ANALYSIS_INTERVAL,
                count=ANALYSIS_COUNT,
                minRequests=ANALYSIS_MIN_REQUESTS,
                maxLatencyP99=ANALYSIS_MAX_P99,
            )
    strategy["progressDeadlineSeconds"] = CANARY_DEADLINE
    return strategy


def render(svc: Svc, shop: Shop) -> dict[str, Any]:
    """The Service document of ``svc`` (the example's, adapted as the module says)."""
    base = "api" if svc.app == "api" else svc.app
    doc = copy.deepcopy(_BASE[base])
    doc["metadata"]["name"] = svc.name
    doc["metadata"].get("annotations", {}).pop("description", None)
    if not doc["metadata"].get("annotations"):
        doc["metadata"].pop("annotations", None)
    spec = doc["spec"]
    if shop.images:
        # The image's own entrypoint; VERSION, FAIL_MODE, SLOW_MS and LINGER_MS are read
        # by its scripts as by the Python apps.
        spec.pop("command", None)
        spec["image"] = f"gitorch-example/{svc.app}:1"
        for probe in ("readinessProbe", "livenessProbe"):
            check = spec.get(probe, {}).get("httpGet", {})
            if check.get("path") == "/healthz":
                check["path"] = "/cgi-bin/healthz"  # busybox httpd serves CGI there
    else:
        spec["command"] = ["python3", str(APPS / svc.app / "app.py")]
    env = {k: str(v) for k, v in spec.get("env", {}).items()}
    env["VERSION"] = svc.version_label
    env["SLOW_MS"] = str(SLOW_MS) if svc.app != "worker" else "0"
    if svc.fail_mode:
        env["FAIL_MODE"] = svc.fail_mode
    api = shop.service("api")
    if "API_SERVICE_PORT" in env and api is not None and api.port is not None and not shop.images:
        env["API_SERVICE_PORT"] = str(api.port)
    spec["env"] = env
    spec["replicas"] = svc.replicas
    if svc.port is not None:
        spec["expose"]["port"] = svc.port
    else:
        spec.pop("expose", None)
    if svc.strategy == "Canary":
        spec["strategy"] = _canary_strategy()
    elif svc.app == "counter":
        # One writer of a ReadWriteOnce volume: gitorch stops the old replica first.
        spec["strategy"] = {"type": "RollingUpdate", "progressDeadlineSeconds": ROLLING_DEADLINE}
        env["LINGER_MS"] = str(COUNTER_LINGER_MS)
    elif svc.strategy == "RollingUpdate":
        spec["strategy"] = copy.deepcopy(_BASE["api"]["spec"]["strategy"])
        spec["strategy"]["progressDeadlineSeconds"] = ROLLING_DEADLINE
    else:
        spec["strategy"] = {"type": "Recreate", "progressDeadlineSeconds": RECREATE_DEADLINE}
    if svc.name != "web" or shop.service("api") is None:
        spec.pop("dependsOn", None)
    return doc


def _dump(doc: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False)


def corrupt_text(kind: str, svc: Svc, shop: Shop) -> str:
    """``svc``'s manifest broken the way ``kind`` says (each one a different check)."""
    doc = render(svc, shop)
    if kind == "unknown-field":
        doc["spec"]["replicaz"] = svc.replicas
    elif kind == "bad-type":
        doc["spec"]["replicas"] = "many"
    elif kind == "unknown-dependency":
        doc["spec"]["dependsOn"] = ["no-such-service"]
    elif kind == "port-twice":
        other = next((s for s in shop.services if s.port and s.name != svc.name), None)
        if other is not None and "expose" in doc["spec"]:
            doc["spec"]["expose"]["port"] = other.port
        else:
            doc["spec"]["replicaz"] = svc.replicas
    elif kind == "yaml-syntax":
        return _dump(doc) + "spec: [unclosed\n"
    return _dump(doc)


def files_of(shop: Shop) -> dict[str, str]:
    """Every manifest of ``shop`` (mutations included)."""
    files = {f"{s.name}.yaml": _dump(render(s, shop)) for s in shop.services}
    if shop.service("counter") is not None:
        files["counter-data.yaml"] = _dump(_BASE["counter:Volume"])
    if shop.corrupt is not None:
        target = _corrupt_target(shop)
        files[f"{target.name}.yaml"] = corrupt_text(shop.corrupt, target, shop)
    if shop.mass_prune:
        keep = sorted(files)[0]
        files = {keep: files[keep]}
    return files


def _corrupt_target(shop: Shop) -> Svc:
    exposed = [s for s in shop.services if s.port is not None]
    digest = hashlib.sha256((shop.corrupt or "").encode()).digest()[0]
    return exposed[digest % len(exposed)] if exposed else shop.services[0]


def diff_files(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str | None]:
    """The writes and deletions that turn ``old`` into ``new``."""
    changes: dict[str, str | None] = {p: t for p, t in new.items() if old.get(p) != t}
    changes.update({p: None for p in old if p not in new})
    return changes


# -- commits ---------------------------------------------------------------------------------

#: Commit kinds and their weights in a soak.
COMMIT_KINDS: dict[str, int] = {
    "good-version": 30,
    "never-ready": 8,
    "errors-canary": 8,
    "invalid": 8,
    "scale": 14,
    "add-service": 8,
    "remove-service": 7,
    "revert": 8,
    "mass-prune": 3,
}


def _pick(items: Sequence[Any], u: float) -> Any:
    return items[min(len(items) - 1, int(u * len(items)))]


def next_change(kind: str, draws: Sequence[float], history: Sequence[Shop], ports: Ports) -> Change:
    """The commit of ``kind`` on top of ``history[-1]`` (``draws``: 3 uniforms in [0, 1)).

    Falls back to a good version where ``kind`` cannot apply (nothing to remove, no
    canary to break, nothing to revert)."""
    head = history[-1]
    base = head.clean()
    u0, u1, u2 = draws[0], draws[1], draws[2]
    if kind == "revert" and len(history) >= 2:
        return Change(
            "revert", "Revert the last commit", history[-2], {}, revert=True, service=None
        )
    if kind == "mass-prune":
        shop = replace(base, mass_prune=True)
        return Change(kind, "Remove most manifests (the guard must refuse it)", shop, {})
    if kind == "invalid":
        shop = replace(base, corrupt=_pick(CORRUPTIONS, u0))
        return Change(kind, f"An invalid manifest ({shop.corrupt})", shop, {})
    if kind == "errors-canary":
        canaries = [s for s in base.services if s.strategy == "Canary" and s.port is not None]
        if canaries:
            svc = _pick(canaries, u0)
            new = replace(svc, version=svc.version + 1, fail_mode=ERRORS)
            return Change(
                kind,
                f"{svc.name}: version {new.version_label} (answers 500)",
                base.with_service(new),
                {},
                service=svc.name,
            )
        kind = "good-version"
    if kind == "never-ready":
        svc = _pick(base.services, u0)
        new = replace(svc, version=svc.version + 1, fail_mode=NEVER_READY)
        return Change(
            kind,
            f"{svc.name}: version {new.version_label} (never ready)",
            base.with_service(new),
            {},
            service=svc.name,
        )
    if kind == "scale":
        scalable = [s for s in base.services if s.strategy != "Recreate" and s.app != "counter"]
        svc = _pick(scalable, u0)
        choices = [n for n in range(1, MAX_REPLICAS + 1) if n != svc.replicas]
        new = replace(svc, replicas=_pick(choices, u1))
        return Change(
            kind,
            f"{svc.name}: {svc.replicas} -> {new.replicas} replicas",
            base.with_service(new),
            {},
            service=svc.name,
        )
    if kind == "add-service":
        absent = [n for n in sorted(ports.extras) if base.service(n) is None]
        if absent:
            name = _pick(absent, u0)
            strategy = "Canary" if u1 < 0.3 else "RollingUpdate"
            new = Svc(name, "api", strategy, 1 + int(u2 * 2), port=ports.extras[name])
            return Change(kind, f"Add {name}", base.with_service(new), {}, service=name)
        kind = "remove-service"
    if kind == "remove-service":
        extras = [s for s in base.services if not s.core]
        if extras:
            svc = _pick(extras, u0)
            return Change(kind, f"Remove {svc.name}", base.without(svc.name), {}, service=svc.name)
    svc = _pick(base.services, u1 if kind != "good-version" else u0)
    new = replace(svc, version=svc.version + 1, fail_mode=GOOD)
    return Change(
        "good-version",
        f"{svc.name}: version {new.version_label}",
        base.with_service(new),
        {},
        service=svc.name,
    )


def add_service_change(name: str, ports: Ports, head: Shop, draws: Sequence[float]) -> Change:
    """Adding the extra ``name`` (the port-taken fault's commit)."""
    base = head.clean()
    strategy = "Canary" if draws[0] < 0.3 else "RollingUpdate"
    new = Svc(name, "api", strategy, 1 + int(draws[1] * 2), port=ports.extras[name])
    return Change("add-service", f"Add {name}", base.with_service(new), {}, service=name)


def settle_change(head: Shop) -> Change:
    """The first commit after the faults: every service on a good new version (so the
    last good version of each is known for the final check)."""
    base = head.clean()
    shop = base
    for svc in base.services:
        shop = shop.with_service(replace(svc, version=svc.version + 1, fail_mode=GOOD))
    return Change("settle", "Settle: every service on a good new version", shop, {})
