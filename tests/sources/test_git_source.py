"""GitSource against a real bare remote: clone once, fetch, resolve, snapshot, history."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest
from sources_helpers import Remote, git

from gitorch.errors import EmptyRepository, RefNotFound, SourceUnreachable
from gitorch.sources import GitSource


def _source(remote: Remote, cache_dir: Path, closing: list[object], **kw: object) -> GitSource:
    source = GitSource(remote.url, cache_dir, **kw)  # type: ignore[arg-type]
    closing.append(source)
    return source


@pytest.fixture
def two_commits(remote: Remote) -> tuple[str, str]:
    """main: c1 (v1 files, tag v1 annotated, branch feature) then c2 (v2 files)."""
    w = remote.work
    w.write("deploy/web.yaml", "name: web\nversion: 1\n")
    w.write("deploy/db.yml", "name: db\nversion: 1\n")
    c1 = w.commit("first")
    w.git("tag", "-a", "v1", "-m", "release 1")
    w.git("branch", "feature")
    w.write("deploy/web.yaml", "name: web\nversion: 2\n")
    w.write("README.md", "docs\n")
    c2 = w.commit("second")
    w.push("main", "feature", "v1")
    return c1, c2


def test_first_fetch_clones_into_hashed_bare_cache(
    remote: Remote, two_commits: tuple[str, str], cache_dir: Path, closing: list[object]
) -> None:
    _c1, c2 = two_commits
    source = _source(remote, cache_dir, closing)
    result = source.fetch()
    expected = cache_dir / (hashlib.sha256(remote.url.encode()).hexdigest()[:16] + ".git")
    assert source.cache_path == expected
    assert git(expected, "rev-parse", "--is-bare-repository") == "true"
    assert (result.updated, result.old_sha, result.new_sha, result.reachable) == (
        True,
        None,
        c2,
        True,
    )
    # Every branch and tag is kept locally under its own name.
    refs = git(expected, "for-each-ref", "--format=%(refname)").splitlines()
    assert refs == ["refs/heads/feature", "refs/heads/main", "refs/tags/v1"]
    # A second source on the same URL reuses the cache: nothing new, nothing re-cloned.
    again = _source(remote, cache_dir, closing).fetch()
    assert (again.updated, again.old_sha, again.new_sha) == (False, c2, c2)
    assert sorted(p.name for p in cache_dir.iterdir()) == [expected.name]


def test_resolve_branch_tag_and_shas(
    remote: Remote, two_commits: tuple[str, str], cache_dir: Path, closing: list[object]
) -> None:
    c1, c2 = two_commits
    source = _source(remote, cache_dir, closing)
    source.fetch()
    assert source.resolve() == c2
    assert source.resolve("main") == c2
    assert source.resolve("refs/heads/main") == c2
    assert source.resolve("feature") == c1
    assert source.resolve("v1") == c1  # annotated tag peeled to its commit
    assert source.resolve(c1[:7]) == c1
    assert source.resolve(c1) == c1
    for bad in ("nope", "0" * 40, "--all", "main\nfoo", ""):
        with pytest.raises(RefNotFound):
            source.resolve(bad)


def test_snapshot_reads_the_bytes_of_an_old_commit(
    remote: Remote, two_commits: tuple[str, str], cache_dir: Path, closing: list[object]
) -> None:
    c1, c2 = two_commits
    source = _source(remote, cache_dir, closing)
    source.fetch()
    old = source.snapshot(c1, "deploy")
    assert old.revision == c1 and old.commit is not None and old.commit.sha == c1
    assert old.root_path == "deploy"
    assert [(f.path, f.data) for f in old.files] == [
        ("deploy/db.yml", b"name: db\nversion: 1\n"),
        ("deploy/web.yaml", b"name: web\nversion: 1\n"),
    ]
    assert old.files[1].blob_id == git(remote.work.path, "rev-parse", f"{c1}:deploy/web.yaml")
    new = source.snapshot(path="deploy/")
    assert new.revision == c2
    assert new.files[1].data == b"name: web\nversion: 2\n"
    # The root holds the manifests of every folder; README.md is not one.
    assert [f.path for f in source.snapshot("v1").files] == ["deploy/db.yml", "deploy/web.yaml"]


def test_fetch_follows_pushes_and_reports_a_force_push(
    remote: Remote, two_commits: tuple[str, str], cache_dir: Path, closing: list[object]
) -> None:
    _c1, c2 = two_commits
    source = _source(remote, cache_dir, closing)
    source.fetch()
    w = remote.work
    w.write("deploy/web.yaml", "name: web\nversion: 3\n")
    c3 = w.commit("third")
    w.push("main")
    forward = source.fetch()
    assert (forward.updated, forward.old_sha, forward.new_sha) == (True, c2, c3)
    assert forward.history_rewritten is False
    assert source.snapshot(path="deploy").files[1].data == b"name: web\nversion: 3\n"

    w.git("reset", "-q", "--hard", c2)
    w.write("deploy/web.yaml", "name: web\nversion: rewritten\n")
    c3b = w.commit("rewritten third")
    w.push("--force", "main")
    rewritten = source.fetch()
    assert (rewritten.updated, rewritten.old_sha, rewritten.new_sha) == (True, c3, c3b)
    assert rewritten.history_rewritten is True
    assert any("history rewritten" in n for n in rewritten.notes)
    assert source.snapshot(path="deploy").files[1].data == b"name: web\nversion: rewritten\n"


def test_tracked_ref_is_what_fetch_reports(
    remote: Remote, two_commits: tuple[str, str], cache_dir: Path, closing: list[object]
) -> None:
    c1, _c2 = two_commits
    source = _source(remote, cache_dir, closing, ref="feature")
    assert source.fetch().new_sha == c1
    remote.work.git("checkout", "-q", "feature")
    remote.work.write("x.yaml", "x: 1\n")
    f2 = remote.work.commit("on feature")
    remote.work.push("feature")
    result = source.fetch()
    assert (result.old_sha, result.new_sha, result.history_rewritten) == (c1, f2, False)


def test_deleted_branch_and_tag_disappear_after_fetch(
    remote: Remote, two_commits: tuple[str, str], cache_dir: Path, closing: list[object]
) -> None:
    c1, _c2 = two_commits
    source = _source(remote, cache_dir, closing, ref="feature")
    source.fetch()
    assert source.resolve("feature") == c1
    remote.work.push("--delete", "feature")
    remote.work.push("--delete", "v1")
    result = source.fetch()
    assert (result.updated, result.old_sha, result.new_sha) == (True, c1, None)
    assert any("no longer exists" in n for n in result.notes)
    with pytest.raises(RefNotFound, match="feature"):
        source.resolve("feature")
    with pytest.raises(RefNotFound):
        source.snapshot("v1")


def test_remote_default_branch_change_is_followed(
    remote: Remote, two_commits: tuple[str, str], cache_dir: Path, closing: list[object]
) -> None:
    c1, c2 = two_commits
    source = _source(remote, cache_dir, closing)
    source.fetch()
    assert source.resolve() == c2
    git(remote.bare, "symbolic-ref", "HEAD", "refs/heads/feature")
    source.fetch()
    assert source.resolve() == c1


def test_unreachable_remote_keeps_the_cache_readable(
    remote: Remote, two_commits: tuple[str, str], cache_dir: Path, closing: list[object]
) -> None:
    _c1, c2 = two_commits
    source = _source(remote, cache_dir, closing)
    source.fetch()
    shutil.rmtree(remote.bare)
    result = source.fetch()
    assert result.reachable is False
    assert (result.updated, result.old_sha, result.new_sha) == (False, c2, c2)
    assert result.error is not None and str(remote.bare) in result.error
    assert "\n" not in result.error
    snap = source.snapshot(path="deploy")
    assert snap.revision == c2
    assert snap.files[1].data == b"name: web\nversion: 2\n"


def test_no_cache_and_no_remote_raises_source_unreachable(
    tmp_path: Path, cache_dir: Path, closing: list[object]
) -> None:
    source = GitSource((tmp_path / "missing.git").as_uri(), cache_dir)
    closing.append(source)
    with pytest.raises(SourceUnreachable, match="missing.git"):
        source.fetch()
    with pytest.raises(SourceUnreachable):
        source.snapshot()
    # A failed clone leaves nothing behind.
    assert list(cache_dir.iterdir()) == []


def test_credentials_in_the_url_are_never_shown(cache_dir: Path, closing: list[object]) -> None:
    # Port 1 on localhost refuses at once: a fast, offline failure.
    source = GitSource("https://alice:s3cr3t-token@127.0.0.1:1/org/repo.git", cache_dir)
    closing.append(source)
    assert "s3cr3t" not in source.display_url and "alice" not in repr(source)
    with pytest.raises(SourceUnreachable) as caught:
        source.fetch()
    text = str(caught.value)
    assert "https://127.0.0.1:1/org/repo.git" in text
    assert "s3cr3t" not in text and "alice" not in text
    assert "\n" not in text


def test_a_remote_that_hangs_is_killed_after_the_timeout(
    tmp_path: Path, cache_dir: Path, closing: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    hang = tmp_path / "hang-ssh"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    monkeypatch.setenv("GIT_SSH_COMMAND", str(hang))
    source = GitSource("ssh://git@example.invalid/repo.git", cache_dir, timeout=1.0)
    closing.append(source)
    started = time.monotonic()
    with pytest.raises(SourceUnreachable, match="no answer within 1s"):
        source.fetch()
    assert time.monotonic() - started < 6


def test_empty_remote_raises_empty_repository(
    remote: Remote, cache_dir: Path, closing: list[object]
) -> None:
    source = _source(remote, cache_dir, closing)
    result = source.fetch()
    assert (result.updated, result.new_sha, result.reachable) == (False, None, True)
    with pytest.raises(EmptyRepository):
        source.resolve()
    with pytest.raises(EmptyRepository):
        source.snapshot()
    # The first push is then picked up.
    remote.work.write("a.yaml", "a: 1\n")
    c1 = remote.work.commit("first")
    remote.work.push("main")
    assert source.fetch().new_sha == c1
    assert [f.path for f in source.snapshot().files] == ["a.yaml"]


def test_changed_paths_between_commits(
    remote: Remote, two_commits: tuple[str, str], cache_dir: Path, closing: list[object]
) -> None:
    c1, c2 = two_commits
    w = remote.work
    w.git("mv", "deploy/db.yml", "deploy/database.yml")
    w.write("deploy/new.yaml", "n: 1\n")
    c3 = w.commit("rename and add")
    w.push("main")
    source = _source(remote, cache_dir, closing)
    source.fetch()
    assert source.changed_paths(c1, c2) == ["README.md", "deploy/web.yaml"]
    assert source.changed_paths(c2) == ["deploy/database.yml", "deploy/db.yml", "deploy/new.yaml"]
    assert source.changed_paths(c3, c3) == []
    with pytest.raises(RefNotFound):
        source.changed_paths("nope")
    assert c3 == source.resolve()


def test_history_metadata_newest_first(
    remote: Remote, cache_dir: Path, closing: list[object]
) -> None:
    w = remote.work
    w.write("a.yaml", "a: 1\n")
    first = w.commit(
        "first\n\nwith a body line",
        env={
            "GIT_AUTHOR_DATE": "2024-01-02T03:04:05+02:00",
            "GIT_COMMITTER_DATE": "2024-01-03T04:05:06-05:30",
        },
    )
    w.write("a.yaml", "a: 2\n")
    second = w.commit("second")
    w.push("main")
    source = _source(remote, cache_dir, closing)
    source.fetch()
    commits = list(source.history())
    assert [c.sha for c in commits] == [second, first]
    old = commits[1]
    assert (old.author_name, old.author_email) == ("Ada Author", "ada@example.com")
    assert (old.committer_name, old.committer_email) == ("Carl Committer", "carl@example.com")
    assert old.authored_at == "2024-01-02T03:04:05+02:00"
    assert old.committed_at == "2024-01-03T04:05:06-05:30"
    assert old.message == "first\n\nwith a body line"
    assert old.signer is None and old.signature_status is None
    assert [c.sha for c in source.history(limit=1)] == [second]
    assert list(source.history(first)) == [old]
    assert source.snapshot(first).commit == old
