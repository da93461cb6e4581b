"""The one exception tree of gitorch.

Every error gitorch raises on purpose derives from :class:`GitorchError`. Third-party
errors (gitpython, docker, sqlite3, yaml, jsonschema) are translated where they enter, with
``raise SomeGitorchError(...) from exc``, so callers handle one tree and users see one clear
line instead of a traceback.

::

    GitorchError
    ├── ManifestError                 desired state that cannot be used
    │   ├── ManifestInvalid           carries every Diagnostic found, sorted
    │   ├── ProbePortUnresolved       (apply.health) a probe names a port spec.ports lacks
    │   └── ConditionSyntaxError      (analysis.condition) a successCondition outside the language
    ├── SourceError                   reading the desired state from Git or a folder
    │   ├── SourceUnreachable         the remote did not answer (the cache may still be read)
    │   ├── RefNotFound               branch, tag or commit unknown (or deleted)
    │   ├── PathNotFound              --path is not a folder in that commit
    │   ├── EmptyRepository           a repository with no commit yet
    │   ├── CommitNotTrusted          (sources.verify) not signed by a key --verify-commits trusts
    │   └── GitFailed                 (sources._gitcmd) a git command failed
    ├── RuntimeDriverError            a node runtime (Docker engine, process driver)
    │   ├── EngineUnavailable         the engine does not answer (or timed out)
    │   │   └── EngineUntrusted       TLS or ssh refused: wrong CA, client certificate, host key
    │   ├── ImageNotFound             the image is not on the node and cannot be pulled
    │   ├── PortInUse                 a host port is already taken
    │   ├── InstanceNotFound          no such replica on that node
    │   ├── ReplicaStartFailed        the replica could not be started
    │   │   └── WorkingDirOutsideRoot (runtime.process) workingDir leaves the allowed root
    │   ├── ReplicaStopFailed         (runtime.process) a replica survived SIGKILL, or its cgroup stays
    │   ├── VolumeError               a volume could not be made, found or removed
    │   │   └── HostPathNotAllowed    a hostPath resolves outside the --allow-host-path dirs
    │   └── UnknownNode               (apply.health) a replica on a node with no runtime
    ├── StateError                    the state store (SQLite or etcd)
    │   ├── StateLocked               another daemon owns this state directory
    │   ├── StateNotFound             (commands.common) no state store where a command reads
    │   ├── StateCorrupt              the store cannot be read or migrated
    │   ├── StateReadOnly             (state.errors) a write through a read-only store
    │   ├── PortUnavailable           (state.errors) no free host port in the range
    │   ├── RecordNotFound            (state.errors) no such record
    │   ├── StateUnavailable          (state.errors) etcd unreachable, or without a quorum
    │   ├── StateConflict             (state.errors) an etcd transaction met a concurrent writer
    │   └── NotLeader                 (state.errors) a write or action by a daemon that does not lead
    ├── PassPreempted                 (apply.reconciler) a pass gave way, before it wrote anything, to a new revision
    ├── PrometheusQueryFailed         (analysis.prometheus) a query gave no usable number
    ├── ProviderError                 (apply.nodepools) a NodePool's provider command failed or answered wrong
    │   └── ListingRefused            (apply.nodepools) listed nodes a pool will not use (no tcp:// for its TLS)
    ├── SecretUnavailable             (secrets) a secret value cannot be read or decrypted
    ├── PlanError                     a plan cannot be computed or has changed
    │   └── PlanChanged               ``apply --expect-plan`` saw a different digest
    ├── HAProxyError                  (traffic.haproxy.errors) haproxy could not be started, reloaded or driven
    │   ├── HAProxyConfigInvalid      haproxy -c refused the rendered configuration
    │   └── HAProxyReloadFailed       a reload failed; the old worker keeps serving
    ├── ApiAuthError                  (commands.remote) the daemon refused the request (401/403)
    └── ConfigError                   a command-line or daemon setting is wrong
        ├── ListenError               (traffic.routes) a load-balancer port cannot be bound
        ├── RouteInvalid              (traffic.routes) a route's weights or rules cannot be served
        ├── WorkerError               (traffic.workers) a load-balancer worker failed or went silent
        ├── WireError                 (traffic.wire) a control message or data-plane file holds the wrong thing
        ├── TokenFileError            (api.auth) the API token file is unreadable, unsafe or malformed
        ├── PolicyConfigError         (sources.verify) --trusted-keys / --allowed-signers unusable
        ├── AgeKeyError               (secrets) --age-key unreadable, readable by others, or empty
        ├── ExposedApiError           (api.auth) a non-loopback --listen without tokens or TLS, and no --api-insecure
        └── TlsConfigError            (api.tls) the API's certificate or key cannot be used
"""

from __future__ import annotations

from dataclasses import dataclass


class GitorchError(Exception):
    """Root of every error gitorch raises on purpose.

    ``detail`` holds optional extra lines shown under the one-line message.
    """

    def __init__(self, message: str, *, detail: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem in the desired state, with the position a user can jump to.

    ``path`` is relative to the repository root (POSIX separators); ``line`` and
    ``column`` are 1-based; ``field`` is the dotted path of the offending field
    (``spec.strategy.rollingUpdate.maxSurge``) or ``""`` when the problem is the whole file.
    The field order makes sorting natural: by file, then line, then column.
    """

    path: str
    line: int
    column: int
    message: str
    field: str = ""

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "field": self.field,
            "message": self.message,
        }


class ManifestError(GitorchError):
    """The desired state cannot be used."""


class ManifestInvalid(ManifestError):
    """One or more manifests are invalid; ``diagnostics`` lists every problem, sorted."""

    def __init__(self, diagnostics: list[Diagnostic] | tuple[Diagnostic, ...]) -> None:
        ordered = tuple(sorted(diagnostics))
        noun = "problem" if len(ordered) == 1 else "problems"
        super().__init__(
            f"{len(ordered)} {noun} in the manifests", detail=tuple(str(d) for d in ordered)
        )
        self.diagnostics = ordered


class SourceError(GitorchError):
    """The desired state could not be read from its source."""


class SourceUnreachable(SourceError):
    """The remote repository did not answer; a cached copy may still be readable."""


class RefNotFound(SourceError):
    """The branch, tag or commit does not exist (or no longer exists)."""


class PathNotFound(SourceError):
    """The manifest folder does not exist in the commit that was read."""


class EmptyRepository(SourceError):
    """The repository has no commit yet."""


class NothingToShow(GitorchError):
    """What was asked about does not exist: no such service, no replica of it now, nothing
    kept of its dead ones (the API answers 404)."""


class NotNow(GitorchError):
    """What was asked cannot be done in the state things are in (a volume that is not
    missing asked to be reset): the API answers 409."""


class RuntimeDriverError(GitorchError):
    """A node runtime failed."""


class EngineUnavailable(RuntimeDriverError):
    """The runtime engine (e.g. dockerd) did not answer in time."""


class EngineUntrusted(EngineUnavailable):
    """The engine answered, but TLS or ssh did not establish trust: its certificate is
    not signed by the node's CA, it refused the client certificate, or its ssh host key
    is not in the known hosts (or the key was refused)."""


class ImageNotFound(RuntimeDriverError):
    """The image is not present on the node and could not be pulled."""


class PortInUse(RuntimeDriverError):
    """A host port needed by a replica is already taken."""


class InstanceNotFound(RuntimeDriverError):
    """The runtime has no instance with that id."""


class ReplicaStartFailed(RuntimeDriverError):
    """A replica could not be created or started."""


class VolumeError(RuntimeDriverError):
    """A volume could not be made, found or removed on a node."""


class HostPathNotAllowed(VolumeError):
    """A Volume's hostPath resolves (symlinks followed) outside the allowed directories."""


class StateError(GitorchError):
    """The embedded state store failed."""


class StateLocked(StateError):
    """Another gitorch daemon already owns this state directory."""


class StateCorrupt(StateError):
    """The state store cannot be read or migrated."""


class PlanError(GitorchError):
    """A plan could not be computed."""


class PlanChanged(PlanError):
    """The plan differs from the one reviewers approved (``--expect-plan``)."""


class ConfigError(GitorchError):
    """A command-line option or daemon setting is wrong."""
