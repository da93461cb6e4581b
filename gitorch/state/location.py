"""Where the state lives: ``--state DIR`` (SQLite) or ``--state etcd://...`` (etcd).

::

    --state .gitorch                                   a state directory (SQLite, the default)
    --state etcd://10.0.0.1:2379,10.0.0.2:2379         etcd, namespace "default"
    --state etcd://10.0.0.1:2379/shop                  etcd, namespace "shop"
    --state 'etcds://10.0.0.1:2379/shop?cacert=/etc/gitorch/ca.pem&cert=/etc/gitorch/client.pem&key=/etc/gitorch/client-key.pem'

Every key of a namespace lives under ``/gitorch/NAMESPACE/``, so several clusters can
share one etcd. ``etcds://`` speaks TLS (``cacert`` verifies the members; ``cert`` and
``key`` are an optional client certificate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from gitorch.errors import ConfigError

ETCD_SCHEMES = ("etcd", "etcds")
DEFAULT_NAMESPACE = "default"
_NAMESPACE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_TLS_OPTIONS = ("cacert", "cert", "key")


@dataclass(frozen=True)
class EtcdLocation:
    """An etcd cluster (its client endpoints) and the namespace of one gitorch cluster."""

    endpoints: tuple[tuple[str, int], ...]
    namespace: str = DEFAULT_NAMESPACE
    tls: bool = False
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def prefix(self) -> str:
        """The key prefix of this namespace (every key gitorch writes starts with it)."""
        return f"/gitorch/{self.namespace}/"

    def url(self, *, certificates: bool = False) -> str:
        """The location as ``--state`` takes it (certificate paths left out unless
        ``certificates``: for a process of gitorch's own that opens the same etcd)."""
        hosts = ",".join(f"{_host(h)}:{p}" for h, p in self.endpoints)
        url = f"{'etcds' if self.tls else 'etcd'}://{hosts}/{self.namespace}"
        files = {"cacert": self.cacert, "cert": self.cert, "key": self.key}
        query = "&".join(f"{k}={quote(v)}" for k, v in files.items() if v and certificates)
        return f"{url}?{query}" if query else url


@dataclass(frozen=True)
class StateLocation:
    """Exactly one of ``directory`` (SQLite) and ``etcd``."""

    directory: Path | None = None
    etcd: EtcdLocation | None = field(default=None)

    @property
    def is_etcd(self) -> bool:
        return self.etcd is not None

    def describe(self) -> str:
        if self.etcd is not None:
            return self.etcd.url()
        return str(self.directory)


def is_etcd_url(text: str) -> bool:
    return any(str(text).startswith(f"{scheme}://") for scheme in ETCD_SCHEMES)


def parse_location(value: str | Path) -> StateLocation:
    """``value`` as a state location (see the module docstring); ConfigError when an etcd
    URL is malformed."""
    if isinstance(value, Path) or not is_etcd_url(value):
        return StateLocation(directory=Path(value))
    return StateLocation(etcd=parse_etcd_url(value))


def parse_etcd_url(text: str) -> EtcdLocation:
    parts = urlsplit(text)
    where = f"--state {text!r}"
    if not parts.netloc:
        raise ConfigError(f"{where}: no etcd endpoint (etcd://HOST:PORT[,HOST:PORT...])")
    endpoints: list[tuple[str, int]] = []
    for item in parts.netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{where}: {item!r} is not HOST:PORT")
        endpoints.append((host.strip("[]"), int(port)))
    namespace = parts.path.strip("/") or DEFAULT_NAMESPACE
    if not _NAMESPACE.match(namespace):
        raise ConfigError(
            f"{where}: namespace {namespace!r} must be lower-case letters, digits, '.', '_' "
            "or '-' (at most 63)"
        )
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - set(_TLS_OPTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown option {unknown[0]!r} (cacert, cert, key)")
    options = {name: query[name][-1] for name in _TLS_OPTIONS if name in query}
    if ("cert" in options) != ("key" in options):
        raise ConfigError(f"{where}: a client certificate needs both cert= and key=")
    tls = parts.scheme == "etcds"
    if options and not tls:
        raise ConfigError(f"{where}: certificates need TLS: use etcds://")
    return EtcdLocation(
        endpoints=tuple(endpoints),
        namespace=namespace,
        tls=tls,
        cacert=options.get("cacert"),
        cert=options.get("cert"),
        key=options.get("key"),
    )


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
