"""Reading commits straight from a repository's object store.

Shared by :class:`~gitorch.sources.remote.GitSource` (its bare cache) and
:class:`~gitorch.sources.local.LocalRepoSource` (a checkout's own ``.git``). Nothing here
looks at a working tree: a ref is resolved to one commit sha first, and every byte is then
read from that commit's tree, so a commit made meanwhile can never mix into a snapshot.
"""

from __future__ import annotations

import os
import posixpath
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import git
from git.objects.base import IndexObject

from gitorch.errors import Diagnostic, EmptyRepository, PathNotFound, RefNotFound, SourceError
from gitorch.sources import signatures
from gitorch.sources._gitcmd import run, try_run
from gitorch.sources._paths import (
    MAX_SYMLINK_HOPS,
    is_hidden,
    is_manifest_name,
    normalize_folder,
    symlink_target_in_repo,
)
from gitorch.sources.base import MAX_FILE_BYTES, CommitInfo, ManifestFile, Snapshot
from gitorch.sources.verify import SignaturePolicy, Verification, judge, signature_kind

# git tree entry kinds (mode >> 12).
_TREE, _BLOB, _SYMLINK, _GITLINK = 0o04, 0o10, 0o12, 0o16

#: A symlink's target is a path; anything longer than this is not worth reading.
_MAX_LINK_BYTES = 4096

_LOG_FIELDS = ("%H", "%an", "%ae", "%aI", "%cn", "%ce", "%cI", "%G?", "%GS", "%GK", "%B")

Resolution = Literal["file", "folder", "outside", "missing", "submodule", "loop", "long"]


def _shown(text: str) -> str:
    """A repo-supplied string made safe for a one-line message."""
    return repr(text if len(text) <= 200 else text[:200] + "...")


class CommitStore:
    """Resolve refs, read manifest trees, diffs and history of one git repository.

    ``what`` names the repository in messages (a redacted URL or a path). Calls are
    serialized with a lock: gitpython's persistent ``cat-file`` pipes are not thread-safe.
    """

    def __init__(self, repo: git.Repo, *, what: str, max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.repo = repo
        self.what = what
        self.max_file_bytes = max_file_bytes
        self._lock = threading.RLock()
        # The manifests of the last snapshot by blob id: the next snapshot (a commit later)
        # reads only the blobs that changed. A blob id names its content, so a hit is the
        # same bytes; one snapshot's files at most are kept.
        self._last_blobs: dict[str, bytes] = {}

    # -- refs ---------------------------------------------------------------------------

    def resolve(self, ref: str | None = None) -> str:
        """Full sha of the commit ``ref`` names (branch, tag, short or full sha, or any
        revision git understands); ``None`` means ``HEAD``."""
        name = "HEAD" if ref is None else ref
        if not name or name != name.strip() or "\n" in name or "\x00" in name:
            raise RefNotFound(f"{self.what}: {_shown(name)} is not a valid ref")
        with self._lock:
            status, out = try_run(
                self.repo,
                ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}"],
            )
            sha = out.strip()
            if status == 0 and len(sha) >= 40:
                return sha
            if self.is_empty():
                raise EmptyRepository(f"{self.what} has no commits yet")
            if ref is None:
                _st, head = try_run(self.repo, ["symbolic-ref", "-q", "HEAD"])
                branch = head.strip().removeprefix("refs/heads/") or "HEAD"
                raise RefNotFound(f"{self.what}: its default branch {branch!r} does not exist")
            raise RefNotFound(f"{self.what}: no branch, tag or commit named {_shown(ref)}")

    def is_empty(self) -> bool:
        """True when the repository has no ref and no commit at all."""
        with self._lock:
            _st, refs = try_run(self.repo, ["for-each-ref", "--count=1", "--format=%(refname)"])
            if refs.strip():
                return False
            status, _out = try_run(self.repo, ["rev-parse", "--verify", "--quiet", "HEAD"])
            return status != 0

    def is_ancestor(self, older: str, newer: str) -> bool:
        """True when ``older`` is reachable from ``newer`` (a fast-forward)."""
        with self._lock:
            status, _out = try_run(self.repo, ["merge-base", "--is-ancestor", older, newer])
            return status == 0

    # -- content ------------------------------------------------------------------------

    def snapshot(self, ref: str | None = None, path: str = "") -> Snapshot:
        """Every manifest under ``path`` at ``ref``, read from the commit's tree."""
        folder = normalize_folder(path)
        with self._lock:
            sha = self.resolve(ref)
            try:
                root = self.repo.commit(sha).tree
                start = root
                if folder:
                    found = _lookup(root, folder)
                    if found is None or found.mode >> 12 != _TREE:
                        # An absolute --path reads from the repository's root: a folder
                        # elsewhere on disk is another repository (--repo).
                        raise PathNotFound(
                            f"{self.what}: --path {path!r} is not a folder in commit "
                            f"{sha[:12]} (--path names a folder of the repository, from "
                            "its root; another repository is --repo)"
                        )
                    start = found
                reader = _TreeReader(root, self.max_file_bytes, self._last_blobs)
                reader.walk(start)
                self._last_blobs = {f.blob_id: f.data for f in reader.files if f.blob_id}
            except (ValueError, git.GitError, OSError) as exc:
                raise SourceError(f"{self.what}: cannot read commit {sha[:12]}: {exc}") from exc
            info = self._commit_infos(sha, 1)
        return Snapshot(
            revision=sha,
            commit=info[0] if info else None,
            root_path=folder,
            files=tuple(sorted(reader.files, key=lambda f: f.path)),
            problems=tuple(sorted(reader.problems)),
            notes=tuple(reader.notes),
        )

    def changed_paths(self, since: str, until: str | None = None) -> list[str]:
        """Sorted repo-relative paths that differ between two commits (renames count as a
        deletion plus an addition, so both paths are listed)."""
        with self._lock:
            old = self.resolve(since)
            new = self.resolve(until)
            out = run(
                self.repo,
                ["diff", "--name-only", "-z", "--no-renames", old, new, "--"],
                what=self.what,
            )
        return sorted({p for p in out.split("\x00") if p})

    def history(self, ref: str | None = None, limit: int = 50) -> Iterator[CommitInfo]:
        """Commits reachable from ``ref``, newest first, at most ``limit``."""
        if limit <= 0:
            return iter(())
        with self._lock:
            sha = self.resolve(ref)
            return iter(self._commit_infos(sha, limit))

    def _commit_infos(self, sha: str, limit: int) -> list[CommitInfo]:
        fmt = "%x00".join(_LOG_FIELDS)
        out = run(
            self.repo,
            ["log", "-z", f"--max-count={limit}", f"--format={fmt}", sha, "--"],
            what=self.what,
            strip=False,
        )
        fields = out.split("\x00")
        width = len(_LOG_FIELDS)
        infos = []
        for start in range(0, len(fields) - width + 1, width):
            (h, an, ae, ad, cn, ce, cd, status, gs, gk, body) = fields[start : start + width]
            raw_sig = self._gpgsig(h)
            infos.append(
                CommitInfo(
                    sha=h,
                    author_name=an,
                    author_email=ae,
                    authored_at=ad,
                    committer_name=cn,
                    committer_email=ce,
                    committed_at=cd,
                    message=body.rstrip("\n"),
                    signer=signatures.signer_for(status, gs, gk, raw_sig),
                    signature_status=signatures.status_word(status, raw_sig),
                    signature_key=gk or (signatures.issuer_key_id(raw_sig) if raw_sig else None),
                )
            )
        return infos

    def verify(self, ref: str, policy: SignaturePolicy) -> Verification:
        """Whether the commit ``ref`` names is signed by a key ``policy`` trusts; git
        checks with only the policy's keys (gitorch/sources/verify.py)."""
        with self._lock:
            sha = self.resolve(ref)
            raw = self._gpgsig(sha)
            kind = signature_kind(raw)
            if kind is None or kind == "x509":
                return judge(sha, kind, "", "", "", policy)
            if kind == "openpgp" and policy.trusted_keys is None:
                return judge(sha, kind, "", "", signatures.issuer_key_id(raw) or "", policy)
            allowed = policy.allowed_signers or Path(os.devnull)
            env = {"GNUPGHOME": str(policy.trusted_keys)} if policy.trusted_keys else {}
            out = run(
                self.repo,
                [
                    # Only the policy's keys count: never the daemon's keyring or config.
                    "-c",
                    "gpg.program=gpg",
                    "-c",
                    "gpg.ssh.program=ssh-keygen",
                    "-c",
                    f"gpg.ssh.allowedSignersFile={allowed}",
                    "log",
                    "-1",
                    "--no-show-signature",
                    "--format=%G?%x00%GS%x00%GK",
                    sha,
                    "--",
                ],  # fmt: skip
                what=self.what,
                env=env,
            )
        status, signer, key = [*out.split("\x00"), "", ""][:3]
        return judge(sha, kind, status.strip(), signer.strip(), key.strip(), policy)

    def _gpgsig(self, sha: str) -> str:
        """The raw signature header of a commit ("" when unsigned). Read from the object
        itself, so a signed commit is noticed even when gpg is missing."""
        try:
            return self.repo.commit(sha).gpgsig or ""
        except (ValueError, git.GitError):
            return ""


def _lookup(root: git.Tree, rel: str) -> IndexObject | None:
    """The tree entry at ``rel`` (no symlinks followed on the way), or ``None``."""
    node: IndexObject = root
    for part in rel.split("/"):
        if not isinstance(node, git.Tree):
            return None
        try:
            node = node.join(part)
        except KeyError:
            return None
    return node


class _TreeReader:
    """Collects manifest files, problems and notes from one commit's tree."""

    def __init__(
        self, root: git.Tree, max_file_bytes: int, known: Mapping[str, bytes] | None = None
    ) -> None:
        self.root = root
        self.max_file_bytes = max_file_bytes
        self.known = known or {}
        self.files: list[ManifestFile] = []
        self.problems: list[Diagnostic] = []
        self.notes: list[str] = []

    def walk(self, tree: git.Tree) -> None:
        for item in tree:
            path = str(item.path)
            name = posixpath.basename(path)
            if is_hidden(name):
                continue
            kind = item.mode >> 12
            if kind == _TREE:
                assert isinstance(item, git.Tree)
                self.walk(item)
            elif kind == _GITLINK:
                self.notes.append(f"{path}: submodule skipped (its files are not read)")
            elif kind == _SYMLINK:
                self._symlink(item)
            elif kind == _BLOB and is_manifest_name(name):
                self._regular(path, item)

    def _problem(self, path: str, message: str) -> None:
        self.problems.append(Diagnostic(path, 1, 1, message))

    def _regular(self, path: str, blob: IndexObject) -> None:
        known = self.known.get(blob.hexsha)  # the tree names it: no read to know the id
        if known is not None and len(known) <= self.max_file_bytes:
            self.files.append(ManifestFile(path=path, blob_id=blob.hexsha, data=known))
            return
        # The size comes from the object header (cat-file --batch-check): checked before
        # a single byte of the content is read.
        size = int(blob.size)
        if size > self.max_file_bytes:
            self._problem(
                path, f"file is {size} bytes, over the {self.max_file_bytes}-byte limit; not read"
            )
            return
        assert isinstance(blob, git.Blob)
        self.files.append(
            ManifestFile(path=path, blob_id=blob.hexsha, data=blob.data_stream.read())
        )

    def _link_target(self, link: IndexObject) -> str | None:
        if int(link.size) > _MAX_LINK_BYTES:
            return None
        assert isinstance(link, git.Blob)
        return bytes(link.data_stream.read()).decode("utf-8", "surrogateescape")

    def _follow(self, link: IndexObject) -> tuple[Resolution, IndexObject | None, str]:
        """Follow a symlink (and symlinks it points to) inside the commit."""
        link_path = str(link.path)
        target = self._link_target(link)
        for _hop in range(MAX_SYMLINK_HOPS):
            if target is None:
                return "long", None, ""
            rel = symlink_target_in_repo(link_path, target)
            if rel is None:
                return "outside", None, target
            if rel == "":
                return "folder", self.root, target
            entry = _lookup(self.root, rel)
            if entry is None:
                return "missing", None, target
            kind = entry.mode >> 12
            if kind == _SYMLINK:
                link_path, target = rel, self._link_target(entry)
                continue
            if kind == _TREE:
                return "folder", entry, target
            if kind == _GITLINK:
                return "submodule", None, target
            return "file", entry, target
        return "loop", None, target or ""

    def _symlink(self, link: IndexObject) -> None:
        path = str(link.path)
        name = posixpath.basename(path)
        outcome, entry, target = self._follow(link)
        if not is_manifest_name(name):
            if outcome == "folder":
                self.notes.append(f"{path}: symlinked folder not followed")
            return
        if outcome == "file" and entry is not None:
            self._regular(path, entry)
            return
        messages = {
            "outside": f"symlink to {_shown(target)} leads outside the repository; not read",
            "missing": f"symlink to {_shown(target)}: no such file in this commit",
            "folder": f"symlink to {_shown(target)} points to a folder, not a file",
            "submodule": f"symlink to {_shown(target)} points into a submodule; not read",
            "loop": f"symlink to {_shown(target)}: too many levels of symlinks",
            "long": "symlink target is too long; not read",
        }
        self._problem(path, messages[outcome])
