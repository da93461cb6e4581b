"""What a commit snapshot reads, skips and refuses: the same rules for a remote's cache and
for a local repository's own object store."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from sources_helpers import Remote

from gitorch.errors import PathNotFound
from gitorch.sources import MAX_FILE_BYTES, GitSource, LocalRepoSource, Snapshot

SourceKind = Callable[[Remote, Path, list[object]], GitSource | LocalRepoSource]


def _git_source(remote: Remote, cache: Path, closing: list[object]) -> GitSource:
    remote.work.push("main")
    source = GitSource(remote.url, cache)
    closing.append(source)
    source.fetch()
    return source


def _local_source(remote: Remote, _cache: Path, closing: list[object]) -> LocalRepoSource:
    source = LocalRepoSource(remote.work.path)
    closing.append(source)
    return source


@pytest.fixture(params=[_git_source, _local_source], ids=["git", "local"])
def make_source(request: pytest.FixtureRequest) -> SourceKind:
    return request.param  # type: ignore[no-any-return]


def _paths(snapshot: Snapshot) -> list[str]:
    return [f.path for f in snapshot.files]


def test_only_visible_yaml_files_are_read(
    remote: Remote, cache_dir: Path, closing: list[object], make_source: SourceKind
) -> None:
    w = remote.work
    w.write("apps/web.yaml", "a\n")
    w.write("apps/db.yml", "b\n")
    w.write("apps/notes.txt", "c\n")
    w.write("apps/web.yaml.bak", "d\n")
    w.write("apps/.hidden.yaml", "e\n")
    w.write("apps/.drafts/x.yaml", "f\n")
    w.write(".github/ci.yaml", "g\n")
    w.write("apps/nested/deep/svc.yaml", "h\n")
    w.commit("files")
    source = make_source(remote, cache_dir, closing)
    snap = source.snapshot()
    assert _paths(snap) == ["apps/db.yml", "apps/nested/deep/svc.yaml", "apps/web.yaml"]
    assert snap.problems == () and snap.root_path == ""
    assert _paths(source.snapshot(path="./apps/nested/")) == ["apps/nested/deep/svc.yaml"]
    # An explicitly named hidden folder is read: only names under --path are skipped.
    assert _paths(source.snapshot(path="apps/.drafts")) == ["apps/.drafts/x.yaml"]


def test_missing_or_non_folder_path_raises_path_not_found(
    remote: Remote, cache_dir: Path, closing: list[object], make_source: SourceKind
) -> None:
    remote.work.write("apps/web.yaml", "a\n")
    remote.work.commit("files")
    source = make_source(remote, cache_dir, closing)
    for bad in ("missing", "apps/web.yaml", "apps/web.yaml/x", "../outside", "apps/../../x"):
        with pytest.raises(PathNotFound):
            source.snapshot(path=bad)
    # A folder given as it lies on disk: the message says what --path means.
    with pytest.raises(PathNotFound, match=r"--path '/tmp/shop' is not a folder .* --repo"):
        source.snapshot(path="/tmp/shop")


def test_a_file_over_the_size_limit_is_reported_not_read(
    remote: Remote, cache_dir: Path, closing: list[object], make_source: SourceKind
) -> None:
    remote.work.write("big.yaml", b"#" * (MAX_FILE_BYTES + 1))
    remote.work.write("exact.yaml", b"#" * MAX_FILE_BYTES)
    remote.work.commit("big")
    snap = make_source(remote, cache_dir, closing).snapshot()
    assert _paths(snap) == ["exact.yaml"]
    assert len(snap.files[0].data) == MAX_FILE_BYTES
    [problem] = snap.problems
    assert (problem.path, problem.line, problem.column) == ("big.yaml", 1, 1)
    assert str(MAX_FILE_BYTES + 1) in problem.message and "not read" in problem.message


def test_symlinks_inside_are_followed_outside_are_refused(
    remote: Remote, cache_dir: Path, closing: list[object], make_source: SourceKind, tmp_path: Path
) -> None:
    w = remote.work
    secret = tmp_path / "secret.yaml"
    secret.write_text("password: hunter2\n")
    w.write("shared/base.yaml", "base: 1\n")
    w.write("deploy/web.yaml", "web: 1\n")
    os.symlink("../shared/base.yaml", w.path / "deploy/base.yaml")  # inside the repo: followed
    os.symlink("base.yaml", w.path / "deploy/chain.yaml")  # a link to a link
    os.symlink(str(secret), w.path / "deploy/abs.yaml")  # absolute: refused
    os.symlink("../../secret.yaml", w.path / "deploy/up.yaml")  # climbs out: refused
    os.symlink("gone.yaml", w.path / "deploy/dangling.yaml")
    os.symlink("../shared", w.path / "deploy/shared-dir")  # folder: noted, not followed
    os.symlink("loop-b.yaml", w.path / "deploy/loop-a.yaml")
    os.symlink("loop-a.yaml", w.path / "deploy/loop-b.yaml")
    w.commit("links")
    snap = make_source(remote, cache_dir, closing).snapshot(path="deploy")
    files = {f.path: f.data for f in snap.files}
    assert files == {
        "deploy/base.yaml": b"base: 1\n",
        "deploy/chain.yaml": b"base: 1\n",
        "deploy/web.yaml": b"web: 1\n",
    }
    assert snap.files[0].blob_id == remote.work.git("rev-parse", "HEAD:shared/base.yaml")
    problems = {p.path: p.message for p in snap.problems}
    assert sorted(problems) == [
        "deploy/abs.yaml",
        "deploy/dangling.yaml",
        "deploy/loop-a.yaml",
        "deploy/loop-b.yaml",
        "deploy/up.yaml",
    ]
    assert "outside the repository" in problems["deploy/abs.yaml"]
    assert "outside the repository" in problems["deploy/up.yaml"]
    assert "no such file" in problems["deploy/dangling.yaml"]
    assert "too many levels" in problems["deploy/loop-a.yaml"]
    assert all(b"hunter2" not in data for data in files.values())
    assert snap.notes == ("deploy/shared-dir: symlinked folder not followed",)


def test_submodules_are_skipped_with_a_note(
    remote: Remote, cache_dir: Path, closing: list[object], make_source: SourceKind
) -> None:
    w = remote.work
    w.write("web.yaml", "web: 1\n")
    head = w.commit("first")
    # A gitlink entry, as `git submodule add` makes (without needing a second repository).
    w.git("update-index", "--add", "--cacheinfo", f"160000,{head},vendor/lib")
    w.git("commit", "-q", "-m", "submodule")
    snap = make_source(remote, cache_dir, closing).snapshot()
    assert _paths(snap) == ["web.yaml"]
    assert snap.problems == ()
    assert snap.notes == ("vendor/lib: submodule skipped (its files are not read)",)


def test_bytes_are_handed_over_undecoded(
    remote: Remote, cache_dir: Path, closing: list[object], make_source: SourceKind
) -> None:
    raw = b"name: caf\xe9\n\x00\xff"
    remote.work.write("latin1.yaml", raw)
    remote.work.commit("bytes")
    snap = make_source(remote, cache_dir, closing).snapshot()
    assert snap.files[0].data == raw
