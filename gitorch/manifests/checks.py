"""Checks the schema cannot express: within one document, and across the whole repo.

Every check works on schema-valid raw documents (so field paths are the user's own, e.g.
``spec.ports[1].name``) and yields :class:`Finding` values; the loader turns them into
positioned diagnostics.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gitorch.manifests.model import Origin
from gitorch.manifests.quantities import (
    QuantityError,
    is_zero_int_or_percent,
    parse_cpu,
    parse_memory,
)
from gitorch.manifests.yamlload import FieldPath, format_field

_PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
_STRATEGY_BLOCKS = {
    "RollingUpdate": "rollingUpdate",
    "BlueGreen": "blueGreen",
    "Canary": "canary",
    "ABTest": "abTest",
}


@dataclass(frozen=True)
class Finding:
    origin: Origin
    path: FieldPath
    message: str
    at_key: bool = False


@dataclass(frozen=True)
class Entry:
    """One schema-valid document."""

    origin: Origin
    kind: str
    name: str
    raw: Mapping[str, Any]
    valid: bool = True  # False: schema-invalid, kept only so references to it resolve


# ---------------------------------------------------------------- one Service


def check_service(entry: Entry) -> Iterator[Finding]:
    spec = entry.raw["spec"]
    origin = entry.origin

    def at(*path: str | int) -> FieldPath:
        return ("spec", *path)

    port_names: dict[str, int] = {}
    container_ports: set[int] = set()
    for i, port in enumerate(spec.get("ports") or []):
        if port["name"] in port_names:
            yield Finding(origin, at("ports", i, "name"), f"duplicate port name '{port['name']}'")
        port_names.setdefault(port["name"], i)
        container_ports.add(port["containerPort"])

    def check_port_ref(ref: Any, path: FieldPath, what: str) -> Iterator[Finding]:
        if isinstance(ref, str) and ref not in port_names:
            yield Finding(
                origin, path, f"{what} refers to port '{ref}', which spec.ports does not define"
            )

    for probe_name in _PROBES:
        probe = spec.get(probe_name)
        if not probe:
            continue
        handlers = [h for h in ("httpGet", "tcpSocket", "exec") if h in probe]
        if len(handlers) > 1:
            yield Finding(
                origin,
                at(probe_name),
                f"{probe_name} has {', '.join(handlers)}: give exactly one of httpGet, tcpSocket or exec",
            )
        for handler in ("httpGet", "tcpSocket"):
            if handler in probe:
                yield from check_port_ref(
                    probe[handler]["port"],
                    at(probe_name, handler, "port"),
                    f"{probe_name}.{handler}",
                )
        if not handlers and len(probe) > 0:
            yield Finding(
                origin, at(probe_name), f"{probe_name} needs one of httpGet, tcpSocket or exec"
            )

    expose = spec.get("expose")
    if expose is not None:
        if not port_names:
            yield Finding(origin, at("expose"), "expose needs at least one port in spec.ports")
        elif "targetPort" in expose:
            target = expose["targetPort"]
            yield from check_port_ref(target, at("expose", "targetPort"), "expose.targetPort")
            if isinstance(target, int) and target not in container_ports:
                yield Finding(
                    origin,
                    at("expose", "targetPort"),
                    f"expose.targetPort {target} matches no containerPort in spec.ports",
                )

    yield from _check_resources(origin, spec)
    yield from _check_strategy(origin, spec, expose)
    yield from _check_autoscale(origin, spec)

    names: set[str] = set()
    for i, mount in enumerate(spec.get("volumes") or []):
        if mount["name"] in names:
            yield Finding(
                origin, at("volumes", i, "name"), f"duplicate volume name '{mount['name']}'"
            )
        names.add(mount["name"])

    for name, value in (spec.get("env") or {}).items():
        if isinstance(value, dict):
            yield from _check_secret_ref(origin, at("env", name), value)
    secret_files: set[str] = set()
    for i, mount in enumerate(spec.get("secrets") or []):
        yield from _check_secret_ref(origin, at("secrets", i), mount)
        if mount["name"] in secret_files:
            yield Finding(
                origin, at("secrets", i, "name"), f"duplicate secret file '{mount['name']}'"
            )
        secret_files.add(mount["name"])
    if secret_files and SECRETS_DIR_ENV in (spec.get("env") or {}):
        yield Finding(
            origin,
            at("env", SECRETS_DIR_ENV),
            f"{SECRETS_DIR_ENV} is set by gitorch for a service with secret files",
            at_key=True,
        )
    for field in ("certFile", "keyFile"):
        name = ((spec.get("expose") or {}).get("tls") or {}).get(field)
        if isinstance(name, str) and (name.startswith("/") or ".." in name.split("/")):
            yield Finding(
                origin,
                at("expose", "tls", field),
                f"{field} must be a relative path inside the operator's secrets directory",
            )
    working_dir = spec.get("workingDir")
    if working_dir is not None and ".." in posixpath.normpath(working_dir).split("/"):
        yield Finding(origin, at("workingDir"), "workingDir must not climb out with '..'")


def check_node(entry: Entry) -> Iterator[Finding]:
    """A Node's credentials are files the operator keeps: names inside the secrets
    directory, never a path a manifest chooses on the daemon's machine."""
    runtime = entry.raw["spec"]["runtime"]
    yield from _check_engine_files(entry.origin, ("spec", "runtime"), runtime)
    endpoint = runtime.get("endpoint", "")
    if "tls" in runtime and not endpoint.startswith("tcp://"):
        yield Finding(entry.origin, ("spec", "runtime", "tls"), "tls is for tcp:// endpoints only")
    if "ssh" in runtime and not endpoint.startswith("ssh://"):
        yield Finding(entry.origin, ("spec", "runtime", "ssh"), "ssh is for ssh:// endpoints only")


def _check_engine_files(
    origin: Origin, where: FieldPath, runtime: Mapping[str, Any]
) -> Iterator[Finding]:
    """An engine's TLS and ssh files are names inside the secrets directory; a client
    certificate comes with its key."""
    for block, fields in (
        ("tls", ("caCert", "clientCert", "clientKey")),
        ("ssh", ("identityFile", "knownHostsFile")),
    ):
        for field in fields:
            name = (runtime.get(block) or {}).get(field)
            if isinstance(name, str) and (name.startswith("/") or ".." in name.split("/")):
                yield Finding(
                    origin,
                    (*where, block, field),
                    f"{field} must be a relative path inside the operator's secrets directory",
                )
    tls = runtime.get("tls") or {}
    if bool(tls.get("clientCert")) != bool(tls.get("clientKey")):
        yield Finding(
            origin,
            (*where, "tls"),
            "clientCert and clientKey go together (the engine checks the key it signs with)",
        )


#: A pool's nodes are named ``POOL-XXXXXX`` (six hex digits), a DNS label of at most 63.
POOL_NAME_MAX = 63 - 7


def check_node_pool(entry: Entry) -> Iterator[Finding]:
    """A NodePool's bounds are in order and its nodes' names stay DNS labels."""
    spec = entry.raw["spec"]
    low, high = spec.get("minNodes", 0), spec["maxNodes"]
    if low > high:
        yield Finding(
            entry.origin, ("spec", "minNodes"), f"minNodes {low} is above maxNodes {high}"
        )
    if len(entry.name) > POOL_NAME_MAX:
        yield Finding(
            entry.origin,
            ("metadata", "name"),
            f"a NodePool's name is at most {POOL_NAME_MAX} characters "
            "(its nodes are named NAME-XXXXXX, a DNS label)",
        )
    runtime = (spec.get("template") or {}).get("runtime") or {}
    yield from _check_engine_files(entry.origin, ("spec", "template", "runtime"), runtime)


#: The env var that names the folder of a service's secret files.
SECRETS_DIR_ENV = "SECRETS_DIR"


def _check_secret_ref(
    origin: Origin, where: FieldPath, ref: Mapping[str, Any]
) -> Iterator[Finding]:
    """A secret reference names exactly one source; a secretFile stays inside the
    operator's secrets directory."""
    if ("secretFile" in ref) == ("secret" in ref or "key" in ref):
        yield Finding(origin, where, "give either secretFile, or secret with key (not both)")
        return
    if ("secret" in ref) != ("key" in ref):
        missing = "key" if "secret" in ref else "secret"
        yield Finding(origin, where, f"secret and key go together: {missing} is missing")
        return
    secret = ref.get("secretFile")
    if secret is not None and (secret.startswith("/") or ".." in secret.split("/")):
        yield Finding(
            origin,
            (*where, "secretFile"),
            "secretFile must be a relative path inside the operator's secrets directory",
        )


def _check_resources(origin: Origin, spec: Mapping[str, Any]) -> Iterator[Finding]:
    resources = spec.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    parsers = {"cpu": parse_cpu, "memory": parse_memory}
    for name, parse in parsers.items():
        if name in requests and name in limits:
            try:
                if parse(requests[name]) > parse(limits[name]):
                    yield Finding(
                        origin,
                        ("spec", "resources", "requests", name),
                        f"requests.{name} {requests[name]} is more than limits.{name} {limits[name]}",
                    )
            except QuantityError:
                continue  # the schema already reported the bad quantity


def _check_strategy(
    origin: Origin, spec: Mapping[str, Any], expose: Mapping[str, Any] | None
) -> Iterator[Finding]:
    strategy = spec.get("strategy") or {}
    kind = strategy.get("type", "RollingUpdate")
    base: FieldPath = ("spec", "strategy")
    for other_kind, block in _STRATEGY_BLOCKS.items():
        if block in strategy and other_kind != kind:
            yield Finding(
                origin,
                (*base, block),
                f"strategy.{block} is set but strategy.type is {kind}",
                at_key=True,
            )
    if kind == "RollingUpdate":
        rolling = strategy.get("rollingUpdate") or {}
        surge = rolling.get("maxSurge", "25%")
        unavailable = rolling.get("maxUnavailable", 0)
        if is_zero_int_or_percent(surge) and is_zero_int_or_percent(unavailable):
            where = "maxSurge" if "maxSurge" in rolling else "maxUnavailable"
            yield Finding(
                origin,
                (*base, "rollingUpdate", where),
                "maxSurge and maxUnavailable cannot both be 0: the rollout could never progress",
            )
        for key in ("maxSurge", "maxUnavailable"):
            value = rolling.get(key)
            if isinstance(value, str) and int(value.rstrip("%")) > 100:
                yield Finding(origin, (*base, "rollingUpdate", key), f"{key} {value} is over 100%")
    traffic_kinds = ("BlueGreen", "Canary", "ABTest")
    if kind in traffic_kinds and expose is None:
        yield Finding(
            origin,
            (*base, "type"),
            f"strategy {kind} shifts traffic, so the Service needs spec.expose",
        )
    if (
        kind in ("Canary", "ABTest")
        and expose is not None
        and expose.get("protocol", "http") != "http"
    ):
        yield Finding(
            origin,
            (*base, "type"),
            f"strategy {kind} needs expose.protocol http (weights and match rules work per request)",
        )
    if kind == "Canary":
        steps = (strategy.get("canary") or {}).get("steps")
        if not steps:
            yield Finding(
                origin, (*base, "canary"), "strategy Canary needs canary.steps (at least one)"
            )
        else:
            yield from _check_canary_steps(origin, (*base, "canary", "steps"), steps)
    if kind == "ABTest" and not (strategy.get("abTest") or {}).get("match"):
        yield Finding(origin, (*base, "abTest"), "strategy ABTest needs abTest.match rules")
    if kind == "BlueGreen":
        blue = strategy.get("blueGreen") or {}
        preview = blue.get("previewPort")
        if preview is not None and expose is not None and preview == expose.get("port"):
            yield Finding(
                origin,
                (*base, "blueGreen", "previewPort"),
                "previewPort must differ from expose.port",
            )
    for rule_index, rule in enumerate((strategy.get("abTest") or {}).get("match") or []):
        if len(rule) != 1:
            yield Finding(
                origin,
                (*base, "abTest", "match", rule_index),
                "a match rule has exactly one of header or cookie",
            )
        for matcher in rule.values():
            if ("exact" in matcher) == ("regex" in matcher):
                yield Finding(
                    origin,
                    (*base, "abTest", "match", rule_index),
                    "a match rule needs exactly one of exact or regex",
                )


def _check_canary_steps(origin: Origin, base: FieldPath, steps: Sequence[Any]) -> Iterator[Finding]:
    if not any("setWeight" in step for step in steps):
        yield Finding(origin, base, "canary.steps never sets a weight (add a setWeight step)")
    last_weight = 0
    for i, step in enumerate(steps):
        weight = step.get("setWeight")
        if weight is None:
            continue
        if weight < last_weight:
            yield Finding(
                origin,
                (*base, i, "setWeight"),
                f"setWeight {weight} is lower than the previous step's {last_weight}",
            )
        last_weight = weight


def _check_autoscale(origin: Origin, spec: Mapping[str, Any]) -> Iterator[Finding]:
    auto = spec.get("autoscale")
    if auto is None:
        return
    base: FieldPath = ("spec", "autoscale")
    low, high = auto.get("minReplicas", 1), auto["maxReplicas"]
    if low > high:
        yield Finding(
            origin, (*base, "minReplicas"), f"minReplicas {low} is more than maxReplicas {high}"
        )
    requests = (spec.get("resources") or {}).get("requests") or {}
    needs = {
        "cpu": "targetAverageUtilization",
        "memory": "targetAverageUtilization",
        "rps": "targetAverageValue",
        "prometheus": "targetValue",
        "latency": "targetP99",
    }
    for i, metric in enumerate(auto.get("metrics") or []):
        kind = metric["type"]
        if needs[kind] not in metric:
            yield Finding(origin, (*base, "metrics", i), f"a {kind} metric needs {needs[kind]}")
        if kind == "prometheus" and "query" not in metric:
            yield Finding(origin, (*base, "metrics", i), "a prometheus metric needs query")
        if kind == "prometheus" and "address" not in metric:
            yield Finding(
                origin,
                (*base, "metrics", i),
                "a prometheus metric needs address (the Prometheus server's http(s) URL)",
            )
        if kind in ("rps", "latency") and "expose" not in spec:
            yield Finding(
                origin,
                (*base, "metrics", i),
                f"{'an' if kind == 'rps' else 'a'} {kind} metric is read from the load balancer:"
                " the service needs expose",
            )
        if kind in ("cpu", "memory") and kind not in requests:
            yield Finding(
                origin,
                (*base, "metrics", i),
                f"a {kind} utilization target needs resources.requests.{kind}",
            )


# ---------------------------------------------------------------- the whole repo


#: Ports gitorch's own daemon listens on by default: its HTTP API and the webhook on it
#: (``gitorch daemon --listen``). A Service exposed there can never be served.
DAEMON_PORTS: Mapping[int, str] = {7420: "the gitorch daemon's API and webhook (--listen)"}


def check_repo(
    entries: Sequence[Entry],
    reserved: Mapping[int, str] = DAEMON_PORTS,
    allowed_host_paths: Sequence[str] = (),
) -> Iterator[Finding]:
    """Duplicates and references between documents. ``reserved``: ports gitorch itself
    listens on (port -> what), which no Service may expose; ``allowed_host_paths``: the
    directories a Volume's ``hostPath`` may be in (the operator's ``--allow-host-path``)."""
    first: dict[tuple[str, str], Entry] = {}
    for entry in entries:
        key = (entry.kind, entry.name)
        if key in first:
            seen = first[key].origin
            yield Finding(
                entry.origin,
                ("metadata", "name"),
                f"duplicate {entry.kind} '{entry.name}' (first defined in {seen.path})",
            )
        else:
            first[key] = entry
    known = {(e.kind, e.name) for e in entries}
    services = {
        e.name: e
        for e in entries
        if e.kind == "Service" and e.valid and first.get(("Service", e.name)) is e
    }
    service_names = {name for kind, name in known if kind == "Service"}
    volumes = {name for kind, name in known if kind == "Volume"}
    nodes = {name for kind, name in known if kind == "Node"}

    for _, entry in sorted(services.items()):
        spec = entry.raw["spec"]
        for i, dep in enumerate(spec.get("dependsOn") or []):
            if dep not in service_names:
                yield Finding(
                    entry.origin, ("spec", "dependsOn", i), f"depends on unknown Service '{dep}'"
                )
        for i, mount in enumerate(spec.get("volumes") or []):
            if mount["volume"] not in volumes:
                yield Finding(
                    entry.origin,
                    ("spec", "volumes", i, "volume"),
                    f"unknown Volume '{mount['volume']}'",
                )
        placement = spec.get("placement") or {}
        for field_name in ("serviceAffinity", "serviceAntiAffinity"):
            for i, term in enumerate(placement.get(field_name) or []):
                if term["service"] not in service_names:
                    yield Finding(
                        entry.origin,
                        ("spec", "placement", field_name, i, "service"),
                        f"{field_name} names unknown Service '{term['service']}'",
                    )
    yield from _check_secret_keys(services, entries, first)
    yield from _check_cycles(services)
    yield from _check_ports(services, reserved)
    volume_entries = {
        e.name: e
        for e in entries
        if e.kind == "Volume" and e.valid and first.get(("Volume", e.name)) is e
    }
    yield from check_volumes(volume_entries, services, allowed_host_paths)
    if nodes:
        for entry in entries:
            if entry.kind == "Volume" and entry.valid:
                node = (entry.raw.get("spec") or {}).get("node")
                if node is not None and node not in nodes:
                    yield Finding(entry.origin, ("spec", "node"), f"unknown Node '{node}'")


def _check_secret_keys(
    services: Mapping[str, Entry],
    entries: Sequence[Entry],
    first: Mapping[tuple[str, str], Entry],
) -> Iterator[Finding]:
    """Every ``{secret: NAME, key: KEY}`` names a Secret of the repo that has that key."""
    keys: dict[str, set[str]] = {}
    for entry in entries:
        if entry.kind == "Secret" and entry.valid and first.get(("Secret", entry.name)) is entry:
            keys[entry.name] = set((entry.raw.get("spec") or {}).get("encryptedData") or {})
    for _, entry in sorted(services.items()):
        spec = entry.raw["spec"]
        refs: list[tuple[FieldPath, Mapping[str, Any]]] = [
            (("spec", "env", name), value)
            for name, value in (spec.get("env") or {}).items()
            if isinstance(value, dict)
        ]
        refs += [(("spec", "secrets", i), m) for i, m in enumerate(spec.get("secrets") or [])]
        for where, ref in refs:
            name = ref.get("secret")
            if name is None or "secretFile" in ref or "key" not in ref:
                continue  # reported by _check_secret_ref
            if name not in keys:
                yield Finding(entry.origin, (*where, "secret"), f"unknown Secret '{name}'")
            elif ref.get("key") not in keys[name]:
                known = ", ".join(sorted(keys[name])) or "none"
                yield Finding(
                    entry.origin,
                    (*where, "key"),
                    f"Secret '{name}' has no key '{ref.get('key')}' (its keys: {known})",
                )


def _check_cycles(services: Mapping[str, Entry]) -> Iterator[Finding]:
    graph = {
        name: [d for d in (e.raw["spec"].get("dependsOn") or []) if d in services]
        for name, e in services.items()
    }
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    reported: set[frozenset[str]] = set()

    def visit(name: str, path: list[str]) -> Iterator[Finding]:
        state[name] = 1
        path.append(name)
        for dep in graph[name]:
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :]
                members = frozenset(cycle)
                if members not in reported:
                    reported.add(members)
                    start = min(cycle)
                    rotated = cycle[cycle.index(start) :] + cycle[: cycle.index(start)]
                    entry = services[start]
                    deps = entry.raw["spec"]["dependsOn"]
                    nxt = rotated[1] if len(rotated) > 1 else start
                    # A one-service "cycle" is a typo more often than a design: say it plainly.
                    message = (
                        f"'{start}' depends on itself"
                        if len(rotated) == 1
                        else "dependency cycle: " + " -> ".join([*rotated, start])
                    )
                    yield Finding(entry.origin, ("spec", "dependsOn", deps.index(nxt)), message)
            elif state.get(dep) is None:
                yield from visit(dep, path)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            yield from visit(name, [])


def _check_ports(
    services: Mapping[str, Entry], reserved: Mapping[int, str] = DAEMON_PORTS
) -> Iterator[Finding]:
    """Two services cannot listen on the same load-balancer port, nor on one gitorch's
    own daemon uses."""
    owners: dict[int, str] = {}
    for name, entry in sorted(services.items()):
        spec = entry.raw["spec"]
        claims: list[tuple[int, FieldPath]] = []
        if "expose" in spec:
            claims.append((spec["expose"]["port"], ("spec", "expose", "port")))
        preview = ((spec.get("strategy") or {}).get("blueGreen") or {}).get("previewPort")
        if preview is not None:
            claims.append((preview, ("spec", "strategy", "blueGreen", "previewPort")))
        for port, path in claims:
            if port in reserved:
                yield Finding(
                    entry.origin,
                    path,
                    f"port {port} is reserved for {reserved[port]}: choose another port",
                )
                continue
            if port in owners and owners[port] != name:
                yield Finding(
                    entry.origin,
                    path,
                    f"port {port} is already used by Service '{owners[port]}'",
                )
            owners.setdefault(port, name)


def describe(path: FieldPath) -> str:
    return format_field(path)


# ---------------------------------------------------------------- volumes

#: Strategies that run the old and the new version side by side (two writers).
_SIDE_BY_SIDE = ("Canary", "BlueGreen", "ABTest")


def host_path_allowed(path: str, allowed: Sequence[str]) -> bool:
    """Whether ``path`` is one of the ``allowed`` directories or inside one (lexically:
    the runtime checks again with symlinks resolved)."""
    normal = posixpath.normpath(path)
    for root in allowed:
        base = posixpath.normpath(root)
        if normal == base or normal.startswith(base.rstrip("/") + "/"):
            return True
    return False


def _allowed_text(allowed: Sequence[str]) -> str:
    if not allowed:
        return "none: the operator allows host paths with --allow-host-path DIR"
    return "--allow-host-path " + ", ".join(sorted(allowed))


def check_volumes(
    volumes: Mapping[str, Entry],
    services: Mapping[str, Entry],
    allowed_host_paths: Sequence[str] = (),
) -> Iterator[Finding]:
    """Volumes and their users: backends, host paths, and the single writer of a
    ReadWriteOnce volume (one replica, one service, no side-by-side strategy)."""
    for _, entry in sorted(volumes.items()):
        spec = entry.raw.get("spec") or {}
        mode = spec.get("accessMode", "ReadWriteOnce")
        host_path = spec.get("hostPath")
        docker_driver = "driver" in spec or bool(spec.get("driverOpts"))
        shares = (
            host_path is not None
            or bool(spec.get("driverOpts"))
            or (spec.get("driver", "local") != "local")
        )
        if host_path is not None and docker_driver:
            yield Finding(
                entry.origin,
                ("spec", "hostPath"),
                "give hostPath or driver/driverOpts, not both",
            )
        if host_path is not None and not host_path_allowed(host_path, allowed_host_paths):
            yield Finding(
                entry.origin,
                ("spec", "hostPath"),
                f"hostPath {host_path} is outside the directories the operator allows "
                f"({_allowed_text(allowed_host_paths)})",
            )
        if host_path is not None and spec.get("reclaimPolicy") == "Delete":
            yield Finding(
                entry.origin,
                ("spec", "reclaimPolicy"),
                "a hostPath is the operator's directory and gitorch never deletes it: "
                "use reclaimPolicy Retain",
            )
        if mode != "ReadWriteOnce" and not shares:
            yield Finding(
                entry.origin,
                ("spec", "accessMode"),
                f"accessMode {mode} needs a backend that can share: spec.hostPath (a directory "
                "the operator provides) or a Docker volume driver with spec.driverOpts (NFS "
                "and friends); a local volume lives on one node with one writer "
                "(ReadWriteOnce)",
            )
    writers: dict[str, str] = {}  # ReadWriteOnce volume -> the service writing it
    for service_name, entry in sorted(services.items()):
        spec = entry.raw["spec"]
        for i, mount in enumerate(spec.get("volumes") or []):
            volume = volumes.get(mount["volume"])
            if volume is None:
                continue  # unknown: reported as such
            vspec = volume.raw.get("spec") or {}
            mode = vspec.get("accessMode", "ReadWriteOnce")
            read_only = bool(mount.get("readOnly", False))
            at: FieldPath = ("spec", "volumes", i)
            if ("driver" in vspec or vspec.get("driverOpts")) and "image" not in spec:
                yield Finding(
                    entry.origin,
                    (*at, "volume"),
                    f"Volume '{volume.name}' is a Docker volume (driver/driverOpts), and this "
                    "Service runs only on process nodes (it has no image)",
                )
            if mode == "ReadOnlyMany" and not read_only:
                yield Finding(
                    entry.origin,
                    (*at, "readOnly"),
                    f"Volume '{volume.name}' is ReadOnlyMany: mount it with readOnly: true",
                )
            if mode != "ReadWriteOnce" or read_only:
                continue
            yield from _single_writer(entry, spec, volume.name, at, writers.get(volume.name))
            writers.setdefault(volume.name, service_name)


def _single_writer(
    entry: Entry, spec: Mapping[str, Any], volume: str, at: FieldPath, other: str | None
) -> Iterator[Finding]:
    """A ReadWriteOnce volume mounted read-write: one writer at a time."""
    why = f"ReadWriteOnce Volume '{volume}' has one writer at a time"
    if other is not None:
        yield Finding(
            entry.origin,
            (*at, "volume"),
            f"{why}, and Service '{other}' already mounts it read-write (mount it readOnly, "
            "or use a Volume with accessMode ReadWriteMany on a backend that can share)",
        )
    replicas = spec.get("replicas", 1)
    auto = spec.get("autoscale")
    if replicas > 1:
        yield Finding(
            entry.origin,
            ("spec", "replicas"),
            f"{why}: replicas {replicas} would be {replicas} writers (use replicas 1, mount it "
            "readOnly, or use accessMode ReadWriteMany on a backend that can share)",
        )
    elif auto is not None and auto["maxReplicas"] > 1:
        yield Finding(
            entry.origin,
            ("spec", "autoscale", "maxReplicas"),
            f"{why}: autoscaling to {auto['maxReplicas']} replicas would make as many writers",
        )
    kind = (spec.get("strategy") or {}).get("type", "RollingUpdate")
    if kind in _SIDE_BY_SIDE:
        yield Finding(
            entry.origin,
            ("spec", "strategy", "type"),
            f"{why}, and strategy {kind} runs the old and the new version side by side: use "
            "RollingUpdate (with such a volume it stops the old replica before starting the "
            "new one) or Recreate",
        )
