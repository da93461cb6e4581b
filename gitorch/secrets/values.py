"""Reading secret values, their keyed digests, and the resolution of a desired state."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets as random
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gitorch.errors import ConfigError, GitorchError
from gitorch.manifests.build import build_service
from gitorch.manifests.model import DesiredState, Secret, SecretRef, Service

log = logging.getLogger("gitorch.secrets")

#: The file (in the state directory) holding the key of the secret digests.
DIGEST_KEY_FILE = "secret-digest.key"

#: A digest names its kind, so a later change of algorithm is a visible change.
_DIGEST_PREFIX = "hmac-sha256:"


class SecretUnavailable(GitorchError):
    """A secret value cannot be read or decrypted (the replica that needs it cannot start)."""


class AgeKeyError(ConfigError):
    """``--age-key`` cannot be used: unreadable, readable by others, or no identity in it."""


def load_digest_key(state_dir: Path, *, create: bool) -> bytes | None:
    """The key of the secret digests, made once per state directory (``create``); None
    when there is none and it may not be made (``plan`` reading another's state)."""
    path = state_dir / DIGEST_KEY_FILE
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        if not create:
            return None
    except (OSError, ValueError):
        return None
    key = random.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key.hex().encode("ascii") + b"\n")
    finally:
        os.close(fd)
    return key


def save_digest_key(state_dir: Path, key: bytes) -> None:
    """Make ``key`` the state directory's key of secret digests (``gitorch state migrate``
    back from etcd), mode 0600, replacing any: the directory holds no digest made with
    another (migrate fills only an empty store)."""
    path = state_dir / DIGEST_KEY_FILE
    fresh = path.with_name(f".{DIGEST_KEY_FILE}.{os.getpid()}")
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key.hex().encode("ascii") + b"\n")
    finally:
        os.close(fd)
    os.replace(fresh, path)


def load_age_identities(path: Path) -> tuple[Any, ...]:
    """The age identities (``AGE-SECRET-KEY-1...`` lines, as ``age-keygen`` writes them) of
    ``--age-key FILE``; refused when others may read it, as ssh refuses a private key."""
    import pyrage

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise AgeKeyError(f"cannot read --age-key {path}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        mode = stat.S_IMODE(info.st_mode)
        if mode & (stat.S_IRWXO | stat.S_IWGRP):
            raise AgeKeyError(
                f"--age-key {path} is accessible by others (mode {mode:04o}); "
                f"it is a private key: run `chmod 600 {path}`"
            )
        text = os.read(fd, 1 << 20).decode("utf-8", "replace")
    finally:
        os.close(fd)
    identities = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError as exc:
            # The line is a private key, or garbage next to one: never quote it.
            raise AgeKeyError(f"--age-key {path} line {number} is not an age identity") from exc
    if not identities:
        raise AgeKeyError(f"--age-key {path} holds no age identity (AGE-SECRET-KEY-1...)")
    return tuple(identities)


class SecretValues:
    """Reads secret values for replicas and writes their digests into desired states.

    ``secrets_dir``: where ``secretFile`` names are read; ``identities``: the daemon's age
    identities (repo Secrets); ``digest_key``: the HMAC key of the digests (None: digests
    cannot be computed, and :meth:`resolve` leaves a desired state as it is). Thread-safe.
    """

    def __init__(
        self,
        secrets_dir: Path | None,
        identities: Sequence[Any] = (),
        digest_key: bytes | None = None,
    ) -> None:
        self.secrets_dir = secrets_dir
        self.identities = tuple(identities)
        self.digest_key = digest_key
        self._lock = threading.Lock()
        # Plaintext of repo Secrets by sha256 of their ciphertext: in memory only.
        self._decrypted: dict[str, bytes] = {}
        self._file_digests: dict[tuple[str, int, int, int], str] = {}
        self._last_good: dict[tuple[str | None, str | None, str | None], str] = {}
        self._warned: set[str] = set()
        self._resolved: dict[tuple[str, tuple[str | None, ...]], Service] = {}

    # -- values --------------------------------------------------------------------------

    def value(self, ref: SecretRef, repo_secrets: Mapping[str, Secret], *, where: str) -> bytes:
        """The bytes of ``ref``; ``where`` names what needs it in the error (the value is
        never in a message)."""
        if ref.file is not None:
            return self._read_file(ref.file, where)
        return self._decrypt(ref, repo_secrets, where)

    def _file_path(self, name: str, where: str) -> Path:
        if self.secrets_dir is None:
            raise SecretUnavailable(
                f"{where} reads secretFile {name!r}, but the daemon has no --secrets-dir"
            )
        root = self.secrets_dir.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise SecretUnavailable(f"{where}: secretFile {name!r} leaves the secrets directory")
        return path

    def _read_file(self, name: str, where: str) -> bytes:
        path = self._file_path(name, where)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SecretUnavailable(
                f"{where}: cannot read secretFile {name!r}: {exc.strerror or exc}"
            ) from exc

    def _decrypt(self, ref: SecretRef, repo_secrets: Mapping[str, Secret], where: str) -> bytes:
        import pyrage

        secret = repo_secrets.get(ref.secret or "")
        ciphertext = secret.encrypted.get(ref.key or "") if secret is not None else None
        if ciphertext is None:
            raise SecretUnavailable(f"{where}: no {ref.describe()} in this revision")
        if not self.identities:
            raise SecretUnavailable(
                f"{where}: {ref.describe()} is encrypted, but the daemon has no --age-key"
            )
        fingerprint = hashlib.sha256(ciphertext.encode("utf-8")).hexdigest()
        with self._lock:
            known = self._decrypted.get(fingerprint)
        if known is not None:
            return known
        try:
            plain = bytes(pyrage.decrypt(ciphertext.encode("utf-8"), list(self.identities)))
        except pyrage.DecryptError as exc:
            raise SecretUnavailable(
                f"{where}: cannot decrypt {ref.describe()} with --age-key "
                "(encrypted for another recipient, or damaged)"
            ) from exc
        with self._lock:
            self._decrypted[fingerprint] = plain
        return plain

    # -- digests -------------------------------------------------------------------------

    def _keyed(self, value: bytes) -> str:
        assert self.digest_key is not None
        return _DIGEST_PREFIX + hmac.new(self.digest_key, value, hashlib.sha256).hexdigest()

    def digest(self, ref: SecretRef, repo_secrets: Mapping[str, Secret]) -> str | None:
        """The keyed digest of ``ref``'s value now; when it cannot be read, the last one
        known (a secret that vanishes for a moment rolls nothing), else None."""
        if self.digest_key is None:
            return None
        token = (ref.file, ref.secret, ref.key)
        try:
            if ref.file is not None:
                found = self._file_digest(ref.file)
            else:
                found = self._keyed(self._decrypt(ref, repo_secrets, where="a service"))
        except SecretUnavailable as exc:
            last = self._last_good.get(token)
            if exc.message not in self._warned:
                self._warned.add(exc.message)
                log.warning("%s%s", exc.message, "; keeping its last value" if last else "")
            return last
        self._last_good[token] = found
        return found

    def _file_digest(self, name: str) -> str:
        path = self._file_path(name, "a service")
        try:
            info = path.stat()
        except OSError as exc:
            raise SecretUnavailable(
                f"cannot read secretFile {name!r}: {exc.strerror or exc}"
            ) from exc
        # Read again only when the file changed (a rotation writes a new file or content).
        key = (str(path), info.st_ino, info.st_mtime_ns, info.st_size)
        with self._lock:
            known = self._file_digests.get(key)
        if known is not None:
            return known
        found = self._keyed(self._read_file(name, "a service"))
        with self._lock:
            self._file_digests[key] = found
        return found

    # -- resolution ----------------------------------------------------------------------

    def resolve(self, desired: DesiredState) -> DesiredState:
        """``desired`` with the digest of every secret value written into its Services'
        references (so their template digests follow the values). Cheap when nothing
        changed: files are read again only when their stat changes, values decrypted once."""
        if self.digest_key is None:
            return desired
        services: dict[str, Service] = {}
        changed = False
        for name, service in desired.services.items():
            resolved = self._resolve_service(service, desired.secrets)
            changed = changed or resolved is not service
            services[name] = resolved
        return replace(desired, services=services) if changed else desired

    def _resolve_service(self, service: Service, repo_secrets: Mapping[str, Secret]) -> Service:
        refs = [var.ref for var in service.env if var.ref is not None]
        refs += [mount.ref for mount in service.secret_files]
        if not refs:
            return service
        digests = tuple(self.digest(ref, repo_secrets) for ref in refs)
        cache_key = (service.digest, digests)
        with self._lock:
            known = self._resolved.get(cache_key)
        if known is not None:
            return known
        canonical = _with_digests(service.canonical, iter(digests))
        resolved = build_service(canonical, service.origin)
        with self._lock:
            self._resolved[cache_key] = resolved
        return resolved


def with_applied_digests(
    desired: DesiredState, applied: Mapping[str, Mapping[str, Any]]
) -> DesiredState:
    """``desired`` with the digest each secret reference had when it was last applied
    (``applied``: service name -> its applied canonical object), wherever the reference
    has no digest of its own and names the same source as the applied one.

    ``gitorch plan`` without the values (no ``--secrets-dir``/``--age-key``, or no digest
    key in the state it reads) cannot digest them: it takes them as unchanged, so an
    untouched Service that uses a secret is not planned as an update that replaces its
    replicas. A reference that changed (another file, another key) still shows."""
    services: dict[str, Service] = {}
    changed = False
    for name, service in desired.services.items():
        before = applied.get(name)
        stamped = _carried(service.canonical, before) if before is not None else None
        if stamped is not None:
            service = build_service(stamped, service.origin)
            changed = True
        services[name] = service
    return replace(desired, services=services) if changed else desired


def _carried(canonical: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any] | None:
    """``canonical`` with ``before``'s digests on its undigested references (None: none
    to carry)."""
    spec = canonical.get("spec") or {}
    old = before.get("spec") or {}
    carried = False
    env: dict[str, Any] = {}
    old_env = old.get("env") or {}
    for var, value in (spec.get("env") or {}).items():
        digest = _digest_for(value, old_env.get(var))
        carried = carried or digest is not None
        env[var] = _stamped(value, digest) if digest is not None else value
    mounts: list[Any] = []
    old_mounts = {m.get("name"): m for m in old.get("secrets") or () if isinstance(m, dict)}
    for mount in spec.get("secrets") or ():
        digest = _digest_for(mount, old_mounts.get(mount.get("name")))
        carried = carried or digest is not None
        mounts.append(_stamped(mount, digest) if digest is not None else mount)
    if not carried:
        return None
    out = {**spec, "env": env}
    if spec.get("secrets"):
        out["secrets"] = mounts
    return {**canonical, "spec": out}


def _digest_for(ref: Any, old: Any) -> str | None:
    """The applied digest of ``old`` when ``ref`` is the same reference without one."""
    if not isinstance(ref, dict) or "digest" in ref or not isinstance(old, dict):
        return None
    digest = old.get("digest")
    if not isinstance(digest, str):
        return None
    return digest if {k: v for k, v in old.items() if k != "digest"} == ref else None


def _with_digests(canonical: Mapping[str, Any], digests: Any) -> dict[str, Any]:
    """A copy of a canonical Service whose secret references carry ``digests`` (in the
    order env, then secret files, as :meth:`SecretValues._resolve_service` lists them)."""
    spec = dict(canonical["spec"])
    env: dict[str, Any] = {}
    for name, value in spec["env"].items():
        env[name] = _stamped(value, next(digests)) if isinstance(value, dict) else value
    spec["env"] = env
    if spec.get("secrets"):
        spec["secrets"] = [_stamped(mount, next(digests)) for mount in spec["secrets"]]
    return {**canonical, "spec": spec}


def _stamped(ref: Mapping[str, Any], digest: str | None) -> dict[str, Any]:
    out = {k: v for k, v in ref.items() if k != "digest"}
    if digest is not None:
        out["digest"] = digest
    return out
