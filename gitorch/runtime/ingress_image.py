"""The ingress image: the daemon's own Python and gitorch's data plane, as a root filesystem.

A remote host serves its exposed services through ``gitorch proxy`` run in a container
(host networking) on its engine. There is no registry to pull such an image from, and the
host may have nothing installed, so gitorch makes the image itself, from what it runs on:
the interpreter (``sys.executable``, at the same path), its standard library (minus the
test suites, tkinter and other things a proxy never imports), the shared libraries they
link (``ldd``, the dynamic loader included, so the image needs nothing from the host), and
gitorch's own package with httptools and uvloop under ``/opt/gitorch``. The engine loads
it with ``docker import`` (:meth:`gitorch.runtime.docker.DockerRuntime.ensure_image`).

The image is named by a fingerprint of gitorch's version and the files' paths, sizes
and times (``gitorch-ingress:<version>-<fingerprint>``): every host runs the same bytes,
a new gitorch (or Python) makes a new tag, and naming it reads no file. The tar is built
once per installation, the first time an engine lacks the image, and kept in the state
directory (``<state>/ingress/``). The image shares the daemon's CPU architecture and C library: hosts must too.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import stat
import subprocess
import sys
import sysconfig
import tarfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gitorch.errors import RuntimeDriverError

#: Where gitorch and its data-plane dependencies sit in the image (on PYTHONPATH).
SITE = "/opt/gitorch"
#: The ingress's state directory inside its container (a named volume).
STATE = "/var/lib/gitorch"
#: Packages the proxy imports besides the standard library.
PACKAGES = ("gitorch", "httptools", "uvloop")
REPOSITORY = "gitorch-ingress"

#: Standard library folders a proxy never imports (the test suites alone are ~25 MB).
_SKIP_DIRS = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "site-packages",
        "dist-packages",
        "distutils",
        "__phello__",
    }
)
#: Extension modules of the standard library a proxy never loads (and whose libraries,
#: X11 for tkinter, would come along).
_SKIP_MODULES = re.compile(
    r"^(_tkinter|_curses|_curses_panel|readline|_gdbm|_dbm|nis|_sqlite3|_test\w*|"
    r"xxlimited\w*|_ctypes_test|_xxtestfuzz|xxsubtype)\."
)
_BUILD_LOCK = threading.Lock()
_LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


@dataclass(frozen=True)
class IngressImage:
    """This installation's ingress image: the tag it is imported as, and where its root
    filesystem (a gzip tar) is built (:meth:`build`) the first time an engine needs it."""

    tag: str
    tar: Path
    python: str  # the interpreter's path inside the image
    files: tuple[str, ...]

    def command(self, *args: str) -> list[str]:
        """``python -m gitorch.traffic.proxy ARGS`` inside the image."""
        return [self.python, "-m", "gitorch.traffic.proxy", *args]

    def build(self) -> Path:
        """The root filesystem's tar, written unless it is there already (once, when
        several hosts need it at the same moment)."""
        with _BUILD_LOCK:
            if not self.tar.is_file():
                self.tar.parent.mkdir(parents=True, exist_ok=True)
                _write_tar(list(self.files), self.tar)
                for old in self.tar.parent.glob("*.tar.gz"):  # one build is enough
                    if old != self.tar:
                        old.unlink(missing_ok=True)
        return self.tar


def ingress_image(cache_dir: Path) -> IngressImage:
    """The ingress image of this installation: its tag is a digest of gitorch's version
    and every file's path, size and time (cheap: nothing is read), so ``gitorch plan``
    can tell which image hosts must run without building it."""
    from gitorch import __version__

    files = sorted(set(_files()))
    fingerprint = hashlib.sha256(__version__.encode())
    for path in files:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        fingerprint.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    key = fingerprint.hexdigest()[:12]
    return IngressImage(
        f"{REPOSITORY}:{__version__}-{key}",
        cache_dir / f"{key}.tar.gz",
        os.path.realpath(sys.executable),
        tuple(files),
    )


def _files() -> Iterator[str]:
    """Every host path the image holds (the packages are mapped to SITE on writing)."""
    python = os.path.realpath(sys.executable)
    yield sys.executable
    yield python
    stdlib = sysconfig.get_paths()["stdlib"]
    yield from _walk(stdlib)
    for package in PACKAGES:
        yield from _walk(_package_dir(package))
    yield from _shared_libraries([python, *_walk_suffix(stdlib, ".so"), *_package_sos()])


def _package_dir(name: str) -> str:
    module = __import__(name)
    return os.path.dirname(os.path.realpath(module.__file__ or ""))


def _package_sos() -> Iterator[str]:
    for package in PACKAGES:
        yield from _walk_suffix(_package_dir(package), ".so")


def _walk(top: str) -> Iterator[str]:
    for root, dirs, names in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("config-"))
        for name in names:
            if name.endswith((".opt-1.pyc", ".opt-2.pyc", ".exe", ".a")):
                continue
            if name.endswith(".so") and _SKIP_MODULES.match(name):
                continue
            yield os.path.join(root, name)


def _walk_suffix(top: str, suffix: str) -> Iterator[str]:
    return (p for p in _walk(top) if p.endswith(suffix))


def _shared_libraries(binaries: Iterable[str]) -> Iterator[str]:
    """What ``ldd`` says ``binaries`` load (the loader included)."""
    binaries = list(binaries)
    for start in range(0, len(binaries), 64):
        done = subprocess.run(  # noqa: S603 (ldd on our own interpreter's files)
            ["ldd", *binaries[start : start + 64]],
            capture_output=True,
            text=True,
            check=False,
        )
        for line in done.stdout.splitlines():
            match = _LDD_PATH.search(line)
            if match:
                yield match.group(1)


def _image_path(path: str) -> str:
    """Where a host file goes in the image: packages under SITE, the rest where it is."""
    for package in PACKAGES:
        root = _package_dir(package)
        if path == root or path.startswith(root + os.sep):
            return f"{SITE}/{package}{path[len(root) :]}"
    return path


def _write_tar(files: list[str], out: Path) -> str:
    """A gzip tar of ``files`` (and the folders and links leading to them) at ``out``,
    in a stable order, owned by root; its sha256."""
    entries: dict[str, tarfile.TarInfo] = {}
    contents: dict[str, str] = {}

    def add_dir(name: str, mode: int = 0o755) -> None:
        parts = name.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            if sub and sub not in entries:
                info = tarfile.TarInfo(sub)
                info.type, info.mode = tarfile.DIRTYPE, mode
                entries[sub] = info

    def add_host_path(path: str) -> None:
        """``path`` with every symlink on the way (``/lib`` -> ``usr/lib`` on Debian)."""
        current = ""
        for part in path.strip("/").split("/"):
            current = f"{current}/{part}"
            name = current.strip("/")
            if os.path.islink(current):
                if name not in entries:
                    info = tarfile.TarInfo(name)
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(current)
                    entries[name] = info
                target = os.path.normpath(
                    os.path.join(os.path.dirname(current), os.readlink(current))
                )
                add_host_path(target + path[len(current) :])
                return
        add_file(path, path)

    def add_file(source: str, target: str) -> None:
        name = target.strip("/")
        if name in entries:
            return
        st = os.stat(source)
        if not stat.S_ISREG(st.st_mode):
            return
        add_dir(os.path.dirname(name))
        info = tarfile.TarInfo(name)
        info.size, info.mode = st.st_size, stat.S_IMODE(st.st_mode) | 0o444
        # The real time, not 0: a .pyc records its source's mtime, and a mismatch would
        # make every ingress compile the standard library again at each start.
        info.mtime = int(st.st_mtime)
        entries[name] = info
        contents[name] = source

    for path in files:
        target = _image_path(path)
        if target != path:
            if os.path.isfile(path):
                add_file(path, target)
        elif os.path.exists(path):
            add_host_path(path)
    add_dir("tmp", 0o1777)
    entries["tmp"].mode = 0o1777
    add_dir(STATE.strip("/"))
    digest = hashlib.sha256()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")  # another process may build too
    try:
        with open(tmp, "wb") as raw:
            hashing = _Hashing(raw, digest)
            with (
                gzip.GzipFile(fileobj=hashing, mode="wb", mtime=0, compresslevel=6) as zipped,
                tarfile.open(fileobj=zipped, mode="w", format=tarfile.GNU_FORMAT) as tar,
            ):
                for name in sorted(entries):
                    info = entries[name]
                    info.uid = info.gid = 0
                    info.uname = info.gname = "root"
                    if not info.isreg():
                        info.mtime = 0
                    if info.isreg():
                        with open(contents[name], "rb") as handle:
                            tar.addfile(info, handle)
                    else:
                        tar.addfile(info)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RuntimeDriverError(f"cannot build the ingress image in {out.parent}: {exc}") from exc
    return digest.hexdigest()


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes what it passes on."""

    def __init__(self, raw: io.BufferedWriter, digest: hashlib._Hash) -> None:
        self.raw, self.digest = raw, digest

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.digest.update(data)
        return self.raw.write(data)
