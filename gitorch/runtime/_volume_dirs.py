"""Volumes of the process driver: directories on the node.

A managed volume is ``<state_dir>/volumes/<cluster>/<name>/data`` with its facts beside
it in ``volume.json`` (name, size, when it was made). A ``hostPath`` volume is the
operator's directory itself (it must resolve, symlinks followed, inside one of the
directories the operator allowed); its ``volume.json`` only records where it is. A
replica finds its volume through ``VOLUME_<NAME>`` (see :func:`volume_env_name`).

Sizes are recorded, **not enforced**: a directory has no size of its own, and project
quotas need a file system mounted with them (``prjquota`` on ext4 or xfs), which gitorch
cannot assume. ``gitorch volumes`` shows the recorded size with that note.

A volume whose directory is gone (removed by hand) is not listed: the reconciler then
knows it as missing and never makes it again, empty, under its users.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from gitorch.errors import HostPathNotAllowed, VolumeError
from gitorch.runtime.base import VolumeInfo, VolumeSpec

_META = "volume.json"
_DATA = "data"
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_host_path(path: str, allowed: tuple[Path, ...]) -> Path:
    """``path`` resolved (symlinks followed), or :class:`HostPathNotAllowed` when that is
    outside every allowed directory (also resolved)."""
    resolved = Path(path).resolve()
    roots = [root.resolve() for root in allowed]
    if any(resolved == root or resolved.is_relative_to(root) for root in roots):
        return resolved
    where = ", ".join(str(r) for r in roots) or "none: start gitorch with --allow-host-path DIR"
    raise HostPathNotAllowed(
        f"hostPath {path} resolves to {resolved}, outside the allowed directories ({where})"
    )


class VolumeDirs:
    """The volumes of one process node (see the module docstring)."""

    def __init__(self, state_dir: Path, node: str, allowed: tuple[Path, ...] = ()) -> None:
        self.root = Path(state_dir) / "volumes"
        self.node = node
        self.allowed = allowed

    def _folder(self, cluster: str, name: str) -> Path:
        if not _NAME_RE.match(name) or "/" in cluster or cluster in ("", ".", ".."):
            raise VolumeError(f"volume name {name!r} of cluster {cluster!r} is not usable")
        return self.root / cluster / name

    def create(self, spec: VolumeSpec, cluster: str) -> VolumeInfo:
        """Make the volume's directory, or adopt the existing one (data kept)."""
        if spec.driver is not None or spec.driver_opts:
            raise VolumeError(
                f"volume {spec.name}: a Docker volume driver (driver/driverOpts) cannot be "
                f"used on process node {self.node}"
            )
        folder = self._folder(cluster, spec.name)
        try:
            if spec.host_path is not None:
                data = check_host_path(spec.host_path, self.allowed)
                data.mkdir(parents=True, exist_ok=True)
            else:
                data = folder / _DATA
                data.mkdir(parents=True, exist_ok=True)
            folder.mkdir(parents=True, exist_ok=True)
            known = self._read_meta(folder)
            meta = {
                "name": spec.name,
                "sizeBytes": spec.size_bytes,
                "hostPath": str(data) if spec.host_path is not None else None,
                "createdAt": (known or {}).get("createdAt") or time.time(),
            }
            if known != meta:
                tmp = folder / f".{_META}.tmp"
                tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
                tmp.replace(folder / _META)
        except OSError as exc:
            raise VolumeError(
                f"volume {spec.name}: cannot make its directory on node {self.node}: {exc}"
            ) from exc
        return self._info(spec.name, data, meta)

    def path(self, cluster: str, name: str) -> Path | None:
        """Where the volume's data is (None when it is not on this node)."""
        meta = self._read_meta(self._folder(cluster, name))
        if meta is None:
            return None
        data = self._data_of(self._folder(cluster, name), meta)
        return data if data.is_dir() else None

    def list(self, cluster: str) -> list[VolumeInfo]:
        """The volumes of ``cluster`` whose data directory exists."""
        base = self.root / cluster
        found: list[VolumeInfo] = []
        try:
            folders = sorted(p for p in base.iterdir() if p.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        for folder in folders:
            meta = self._read_meta(folder)
            if meta is None:
                continue
            data = self._data_of(folder, meta)
            if data.is_dir():
                found.append(self._info(folder.name, data, meta))
        return found

    def remove(self, cluster: str, name: str) -> None:
        """Delete the volume and its data (a host path's directory is left alone)."""
        folder = self._folder(cluster, name)
        if not folder.exists():
            return
        meta = self._read_meta(folder) or {}
        try:
            if meta.get("hostPath"):
                (folder / _META).unlink(missing_ok=True)
                folder.rmdir()
            else:
                shutil.rmtree(folder)
        except OSError as exc:
            raise VolumeError(
                f"volume {name}: cannot remove it from node {self.node}: {exc}"
            ) from exc

    def _info(self, name: str, data: Path, meta: dict[str, object]) -> VolumeInfo:
        size = meta.get("sizeBytes")
        created = meta.get("createdAt")
        host = meta.get("hostPath")
        return VolumeInfo(
            name=name,
            node=self.node,
            handle=str(data),
            size_bytes=int(size) if isinstance(size, int) else None,
            created_at=float(created) if isinstance(created, (int, float)) else None,
            host_path=str(host) if host else None,
        )

    @staticmethod
    def _data_of(folder: Path, meta: dict[str, object]) -> Path:
        host = meta.get("hostPath")
        return Path(str(host)) if host else folder / _DATA

    @staticmethod
    def _read_meta(folder: Path) -> dict[str, object] | None:
        try:
            value = json.loads((folder / _META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None
