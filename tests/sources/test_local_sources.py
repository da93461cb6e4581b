"""LocalRepoSource (a checkout's commits) and WorktreeSource (its files as they are)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sources_helpers import Checkout, git

from gitorch.errors import EmptyRepository, PathNotFound, RefNotFound, SourceError
from gitorch.sources import MAX_FILE_BYTES, LocalRepoSource, WorktreeSource


def test_local_repo_reads_commits_not_the_working_tree(
    checkout: Checkout, closing: list[object]
) -> None:
    checkout.write("app/web.yaml", "version: 1\n")
    c1 = checkout.commit("one")
    checkout.write("app/web.yaml", "version: 2\n")
    c2 = checkout.commit("two")
    checkout.write("app/web.yaml", "version: uncommitted\n")
    checkout.write("app/new.yaml", "untracked: true\n")
    status_before = checkout.git("status", "--porcelain")
    source = LocalRepoSource(checkout.path)
    closing.append(source)
    fetched = source.fetch()
    assert (fetched.reachable, fetched.updated) == (True, False)
    assert source.resolve() == c2
    snap = source.snapshot(path="app")
    assert [(f.path, f.data) for f in snap.files] == [("app/web.yaml", b"version: 2\n")]
    assert source.snapshot(c1[:8], "app").files[0].data == b"version: 1\n"
    assert [c.sha for c in source.history()] == [c2, c1]
    assert source.changed_paths(c1) == ["app/web.yaml"]
    # Nothing on disk was touched.
    assert (checkout.path / "app/web.yaml").read_text() == "version: uncommitted\n"
    assert checkout.git("status", "--porcelain") == status_before


def test_local_repo_names_the_manifests_its_commit_leaves_out(
    checkout: Checkout, closing: list[object]
) -> None:
    """What `validate` and `plan` note when they read the commit of an edited checkout:
    edited, staged, deleted and untracked manifests under the path; not other files,
    not other folders; nothing once committed. The index is not written (no lock)."""
    checkout.write("app/web.yaml", "version: 1\n")
    checkout.write("app/gone.yaml", "version: 1\n")
    checkout.write("other/db.yaml", "version: 1\n")
    checkout.commit("one")
    source = LocalRepoSource(checkout.path)
    closing.append(source)
    assert source.uncommitted("app") == []
    checkout.write("app/web.yaml", "version: 2\n")
    (checkout.path / "app/gone.yaml").unlink()
    checkout.write("app/deep/new.yml", "new: true\n")
    checkout.write("app/staged.yaml", "staged: true\n")
    checkout.git("add", "app/staged.yaml")
    checkout.write("app/README.md", "not a manifest\n")
    checkout.write("other/db.yaml", "version: 2\n")
    index = (checkout.path / ".git" / "index").stat().st_mtime_ns
    assert source.uncommitted("app") == [
        "app/deep/new.yml",
        "app/gone.yaml",
        "app/staged.yaml",
        "app/web.yaml",
    ]
    assert source.uncommitted() == [
        "app/deep/new.yml",
        "app/gone.yaml",
        "app/staged.yaml",
        "app/web.yaml",
        "other/db.yaml",
    ]
    assert (checkout.path / ".git" / "index").stat().st_mtime_ns == index
    checkout.commit("two")
    assert source.uncommitted("app") == []


def test_local_repo_on_a_detached_head_and_branches(
    checkout: Checkout, closing: list[object]
) -> None:
    checkout.write("a.yaml", "a: 1\n")
    c1 = checkout.commit("one")
    checkout.git("checkout", "-q", "-b", "other")
    checkout.write("a.yaml", "a: 2\n")
    c2 = checkout.commit("two")
    checkout.git("checkout", "-q", "--detach", c1)
    source = LocalRepoSource(checkout.path)
    closing.append(source)
    assert source.resolve() == c1
    assert source.resolve("other") == c2
    with pytest.raises(RefNotFound):
        source.resolve("missing-branch")


def test_local_empty_repository(checkout: Checkout, closing: list[object]) -> None:
    source = LocalRepoSource(checkout.path)
    closing.append(source)
    with pytest.raises(EmptyRepository):
        source.snapshot()
    with pytest.raises(EmptyRepository):
        list(source.history())


def test_local_repo_refuses_a_folder_inside_a_checkout(checkout: Checkout) -> None:
    checkout.write("deploy/a.yaml", "a: 1\n")
    checkout.commit("one")
    with pytest.raises(SourceError, match="inside the git repository"):
        LocalRepoSource(checkout.path / "deploy")


def test_worktree_sees_uncommitted_edits(checkout: Checkout, closing: list[object]) -> None:
    checkout.write("app/web.yaml", "version: 1\n")
    c1 = checkout.commit("one")
    checkout.write("app/web.yaml", "version: edited\n")
    checkout.write("app/new.yml", "untracked: true\n")
    checkout.write("app/.web.yaml.swp", "swap")
    checkout.write("app/readme.md", "no\n")
    source = WorktreeSource(checkout.path)
    closing.append(source)
    assert source.resolve() == "worktree"
    snap = source.snapshot(path="app")
    assert (snap.revision, snap.commit, snap.root_path) == ("worktree", None, "app")
    assert [(f.path, f.data) for f in snap.files] == [
        ("app/new.yml", b"untracked: true\n"),
        ("app/web.yaml", b"version: edited\n"),
    ]
    # Blob ids match what git would store, so content equal to a commit's shares its id.
    assert snap.files[1].blob_id == git(checkout.path, "hash-object", "app/web.yaml")
    # Like a commit diff, every changed path counts, manifest or not.
    assert source.changed_paths(c1) == [
        "app/.web.yaml.swp",
        "app/new.yml",
        "app/readme.md",
        "app/web.yaml",
    ]
    assert [c.sha for c in source.history()] == [c1]
    with pytest.raises(SourceError, match="ref"):
        source.snapshot("main")
    with pytest.raises(PathNotFound):
        source.snapshot(path="nope")
    with pytest.raises(PathNotFound):
        source.snapshot(path="../..")


def test_worktree_of_a_plain_folder(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.yaml").write_text("a: 1\n")
    source = WorktreeSource(tmp_path / "m")
    assert [f.path for f in source.snapshot().files] == ["a.yaml"]
    assert list(source.history()) == []
    with pytest.raises(SourceError, match="not a git checkout"):
        source.changed_paths("HEAD")


def test_worktree_refuses_hostile_files(
    checkout: Checkout, closing: list[object], tmp_path: Path
) -> None:
    secret = tmp_path / "secret.yaml"
    secret.write_text("password: hunter2\n")
    checkout.write("shared/base.yaml", "base: 1\n")
    checkout.write("deploy/big.yaml", b"#" * (MAX_FILE_BYTES + 1))
    d = checkout.path / "deploy"
    os.symlink("../shared/base.yaml", d / "base.yaml")
    os.symlink(str(secret), d / "abs.yaml")
    os.symlink("../../secret.yaml", d / "up.yaml")
    os.symlink("../shared", d / "shared-dir")
    os.mkfifo(d / "fifo.yaml")  # reading it would block forever
    (d / "sub").mkdir()
    (d / "sub" / ".git").write_text("gitdir: elsewhere\n")  # a nested checkout
    (d / "sub" / "x.yaml").write_text("x: 1\n")
    source = WorktreeSource(checkout.path)
    closing.append(source)
    snap = source.snapshot(path="deploy")
    assert [(f.path, f.data) for f in snap.files] == [("deploy/base.yaml", b"base: 1\n")]
    problems = {p.path: p.message for p in snap.problems}
    assert sorted(problems) == [
        "deploy/abs.yaml",
        "deploy/big.yaml",
        "deploy/fifo.yaml",
        "deploy/up.yaml",
    ]
    assert "outside the repository" in problems["deploy/abs.yaml"]
    assert "outside the repository" in problems["deploy/up.yaml"]
    assert "limit" in problems["deploy/big.yaml"]
    assert "regular file" in problems["deploy/fifo.yaml"]
    assert sorted(snap.notes) == [
        "deploy/shared-dir: symlinked folder not followed",
        "deploy/sub: nested git repository skipped",
    ]


def test_a_snapshot_reads_only_the_blobs_the_last_one_did_not_have(
    checkout: Checkout, closing: list[object]
) -> None:
    checkout.write("app/web.yaml", "version: 1\n")
    checkout.write("app/db.yaml", "db: 1\n")
    c1 = checkout.commit("one")
    source = LocalRepoSource(checkout.path)
    closing.append(source)
    first = {f.path: f.data for f in source.snapshot(path="app").files}
    checkout.write("app/web.yaml", "version: 2\n")
    checkout.write("app/copy.yaml", "db: 1\n")  # new path, same content as db.yaml
    checkout.commit("two")
    second = {f.path: f.data for f in source.snapshot(path="app").files}
    assert second == {
        "app/web.yaml": b"version: 2\n",
        "app/db.yaml": b"db: 1\n",
        "app/copy.yaml": b"db: 1\n",
    }
    # The unchanged blob's bytes are the very object read for the previous snapshot.
    assert second["app/db.yaml"] is first["app/db.yaml"]
    assert second["app/copy.yaml"] is first["app/db.yaml"]
    # Back to the first commit: what the cache no longer holds is read again.
    assert {f.path: f.data for f in source.snapshot(c1, "app").files} == first
