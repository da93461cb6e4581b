"""Turn a revision's manifest files into a validated :class:`DesiredState`.

The loader reports every problem of the whole repo at once, as sorted
``PATH:LINE:COLUMN: message`` diagnostics. Work per file (parse, schema, per-document
checks, typed objects) is cached by blob id, so after a commit that touches one file only
that file is read again; cross-document checks are cheap and always rerun.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gitorch.errors import Diagnostic, ManifestInvalid
from gitorch.manifests import schema
from gitorch.manifests.build import BUILDERS, digest_of
from gitorch.manifests.checks import (
    DAEMON_PORTS,
    Entry,
    Finding,
    check_node,
    check_node_pool,
    check_repo,
    check_service,
)
from gitorch.manifests.model import (
    DesiredState,
    ManifestObject,
    Node,
    NodePool,
    Origin,
    Secret,
    Service,
    Volume,
)
from gitorch.manifests.quantities import QuantityError
from gitorch.manifests.yamlload import (
    FieldPath,
    PositionIndex,
    format_field,
    index_positions,
    parse,
    shown,
)

#: Across the whole repo: more documents than this is refused (a million tiny documents).
MAX_DOCUMENTS_TOTAL = 50_000


class ManifestFileLike(Protocol):
    """What the loader needs of a file (``gitorch.sources.base.ManifestFile`` is one)."""

    @property
    def path(self) -> str: ...

    @property
    def blob_id(self) -> str: ...

    @property
    def data(self) -> bytes: ...


@dataclass
class _FileResult:
    """Everything derived from one blob, independent of the other files."""

    entries: list[Entry] = field(default_factory=list)
    objects: list[ManifestObject] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    yaml_problems: list[tuple[int, int, str]] = field(default_factory=list)
    documents: int = 0


@dataclass(frozen=True)
class LoadResult:
    """The desired state (None when anything is wrong) and every diagnostic, sorted."""

    state: DesiredState | None
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return self.state is not None


class ManifestLoader:
    """Loads revisions; keep one per process to benefit from the per-blob cache."""

    def __init__(
        self,
        cache_size: int = 20_000,
        reserved_ports: Mapping[int, str] | None = None,
        allowed_host_paths: Sequence[str] = (),
    ) -> None:
        """``reserved_ports``: ports gitorch itself listens on (port -> what), refused as
        a Service's expose or preview port (default: the daemon API's default port).
        ``allowed_host_paths``: directories a Volume's ``hostPath`` may be in (the
        operator's ``--allow-host-path``; none by default: every hostPath is refused)."""
        self._cache: OrderedDict[tuple[str, str], _FileResult] = OrderedDict()
        self._cache_size = cache_size
        self.reserved_ports = DAEMON_PORTS if reserved_ports is None else dict(reserved_ports)
        self.allowed_host_paths = tuple(allowed_host_paths)

    def load(
        self,
        files: Iterable[ManifestFileLike],
        *,
        revision: str,
        root_path: str = "",
        problems: Sequence[Diagnostic] = (),
    ) -> LoadResult:
        """Validate ``files``; ``problems`` are diagnostics the source already found."""
        files = sorted(files, key=lambda f: f.path)
        diagnostics: list[Diagnostic] = list(problems)
        results: list[tuple[ManifestFileLike, _FileResult]] = []
        total_documents = 0
        for file in files:
            result = self._file_result(file)
            total_documents += result.documents
            if total_documents > MAX_DOCUMENTS_TOTAL:
                diagnostics.append(
                    Diagnostic(
                        file.path, 1, 1, f"more than {MAX_DOCUMENTS_TOTAL} documents in the repo"
                    )
                )
                break
            results.append((file, result))

        entries = [entry for _, result in results for entry in result.entries]
        findings = [finding for _, result in results for finding in result.findings]
        findings.extend(check_repo(entries, self.reserved_ports, self.allowed_host_paths))

        by_path = {file.path: file for file, _ in results}
        positions: dict[str, PositionIndex] = {}
        for file, result in results:
            diagnostics.extend(
                Diagnostic(file.path, line, column, message)
                for line, column, message in result.yaml_problems
            )
        for finding in findings:
            diagnostics.append(self._position(finding, by_path, positions))

        if diagnostics:
            return LoadResult(None, tuple(sorted(set(diagnostics))))
        return LoadResult(self._state(results, revision, root_path), ())

    def _state(
        self, results: list[tuple[ManifestFileLike, _FileResult]], revision: str, root_path: str
    ) -> DesiredState:
        services: dict[str, Service] = {}
        nodes: dict[str, Node] = {}
        volumes: dict[str, Volume] = {}
        secrets: dict[str, Secret] = {}
        pools: dict[str, NodePool] = {}
        for _, result in results:
            for obj in result.objects:
                if isinstance(obj, Service):
                    services[obj.name] = obj
                elif isinstance(obj, Node):
                    nodes[obj.name] = obj
                elif isinstance(obj, Secret):
                    secrets[obj.name] = obj
                elif isinstance(obj, NodePool):
                    pools[obj.name] = obj
                else:
                    volumes[obj.name] = obj
        all_digests = sorted(f"{o.kind}/{o.name}/{o.digest}" for _, r in results for o in r.objects)
        return DesiredState(
            revision=revision,
            root_path=root_path,
            services=dict(sorted(services.items())),
            nodes=dict(sorted(nodes.items())),
            volumes=dict(sorted(volumes.items())),
            digest=digest_of(all_digests),
            secrets=dict(sorted(secrets.items())),
            node_pools=dict(sorted(pools.items())),
        )

    # ------------------------------------------------------------ per file, cached

    def _file_result(self, file: ManifestFileLike) -> _FileResult:
        key = (file.path, file.blob_id)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        result = _analyse_file(file.path, file.data)
        self._cache[key] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

    @staticmethod
    def _position(
        finding: Finding,
        files: Mapping[str, ManifestFileLike],
        positions: dict[str, PositionIndex],
    ) -> Diagnostic:
        path = finding.origin.path
        index = positions.get(path)
        if index is None:
            index = positions[path] = index_positions(files[path].data)
        if finding.at_key:
            line, column = index.key(finding.origin.document, finding.path)
        else:
            line, column = index.value(finding.origin.document, finding.path)
        return Diagnostic(path, line, column, finding.message, format_field(finding.path))


def _analyse_file(path: str, data: bytes) -> _FileResult:
    parsed = parse(data)
    result = _FileResult(yaml_problems=list(parsed.problems), documents=len(parsed.documents))
    for index, document in enumerate(parsed.documents):
        if document is None:
            continue  # an empty document, e.g. a trailing "---"
        origin = Origin(path, index)
        entry = _check_document(origin, document, result.findings)
        if entry is None:
            continue
        result.entries.append(entry)
        if not entry.valid:
            continue
        checks = {"Service": check_service, "Node": check_node, "NodePool": check_node_pool}
        check = checks.get(entry.kind)
        if check is not None:
            before = len(result.findings)
            result.findings.extend(check(entry))
            if len(result.findings) > before:
                continue
        try:
            built: ManifestObject = BUILDERS[entry.kind](document, origin)
            result.objects.append(built)
        except (QuantityError, KeyError, TypeError, ValueError) as exc:
            # The schema should have caught it; never let a gap crash the loader.
            result.findings.append(Finding(origin, ("spec",), f"cannot be used: {exc}"))
    return result


def _check_document(origin: Origin, document: Any, findings: list[Finding]) -> Entry | None:
    """Envelope and schema; returns the entry only for a schema-valid document."""
    if not isinstance(document, dict):
        # Say what was found: a list here usually means a stray "- " before apiVersion.
        got = schema._type_name(document)
        findings.append(
            Finding(
                origin,
                (),
                f"a manifest must be a mapping with apiVersion, kind and metadata, not {got}",
            )
        )
        return None
    kind = document.get("kind")
    if kind not in schema.KINDS:
        if kind is None:
            message = f"missing required field 'kind' (one of {', '.join(schema.KINDS)})"
            findings.append(Finding(origin, (), message))
        else:
            message = f"unknown kind {shown(kind)} (expected one of {', '.join(schema.KINDS)})"
            findings.append(Finding(origin, ("kind",), message))
        return None
    if not schema.is_valid(kind, document):
        problems = schema.problems(kind, document)
        if not problems:  # validators disagree: trust the detailed one, but say so
            problems = [schema.SchemaProblem((), "rejected by the schema")]
        for problem in problems:
            findings.append(Finding(origin, problem.path, problem.message, problem.at_key))
        name = (
            (document.get("metadata") or {}).get("name")
            if isinstance(document.get("metadata"), dict)
            else None
        )
        if isinstance(name, str):
            return Entry(origin, kind, name, document, valid=False)
        return None
    return Entry(origin, kind, document["metadata"]["name"], document)


def load_desired_state(
    files: Iterable[ManifestFileLike],
    *,
    revision: str,
    root_path: str = "",
    problems: Sequence[Diagnostic] = (),
) -> DesiredState:
    """Load and validate, raising :class:`ManifestInvalid` with every diagnostic."""
    result = ManifestLoader().load(files, revision=revision, root_path=root_path, problems=problems)
    if result.state is None:
        raise ManifestInvalid(list(result.diagnostics))
    return result.state


__all__ = ["LoadResult", "ManifestLoader", "load_desired_state", "FieldPath"]


class SnapshotLike(Protocol):
    """What :func:`load_desired` reads of a source's snapshot (``gitorch.sources.Snapshot``)."""

    @property
    def files(self) -> Sequence[ManifestFileLike]: ...

    @property
    def revision(self) -> str: ...

    @property
    def root_path(self) -> str: ...

    @property
    def problems(self) -> Sequence[Diagnostic]: ...


def load_desired(snapshot: SnapshotLike, loader: ManifestLoader | None = None) -> DesiredState:
    """The desired state of a snapshot, or :class:`ManifestInvalid` with every problem:
    the one way ``plan``, ``apply`` and the daemon read Git."""
    result = (loader or ManifestLoader()).load(
        snapshot.files,
        revision=snapshot.revision,
        root_path=snapshot.root_path,
        problems=snapshot.problems,
    )
    if result.state is None:
        raise ManifestInvalid(list(result.diagnostics))
    return result.state
