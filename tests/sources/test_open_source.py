"""open_source: which source --repo/--worktree give, and clear errors otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from sources_helpers import Checkout

from gitorch.errors import SourceError
from gitorch.sources import GitSource, LocalRepoSource, WorktreeSource, open_source
from gitorch.sources._urls import is_remote_url, redact_text, redact_url


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/org/repo.git",
        "http://git.local/repo",
        "ssh://git@host:2222/org/repo.git",
        "file:///srv/git/repo.git",
        "git@github.com:org/repo.git",
        "host.example:org/repo.git",
    ],
)
def test_urls_give_a_git_source(url: str, tmp_path: Path) -> None:
    source = open_source(url, cache_root=tmp_path / "cache")
    assert isinstance(source, GitSource)
    assert source.cache_path.parent == tmp_path / "cache"
    assert not (tmp_path / "cache").exists()  # nothing cloned until first use


def test_local_paths(checkout: Checkout, tmp_path: Path) -> None:
    checkout.write("a.yaml", "a: 1\n")
    checkout.commit("one")
    cache = tmp_path / "cache"
    assert isinstance(open_source(str(checkout.path), cache_root=cache), LocalRepoSource)
    assert isinstance(
        open_source(str(checkout.path), cache_root=cache, worktree=True), WorktreeSource
    )
    plain = tmp_path / "plain"
    plain.mkdir()
    assert isinstance(open_source(str(plain), cache_root=cache, worktree=True), WorktreeSource)
    with pytest.raises(SourceError, match="not a git repository.*--worktree"):
        open_source(str(plain), cache_root=cache)
    with pytest.raises(SourceError, match="no such directory"):
        open_source(str(tmp_path / "missing"), cache_root=cache)
    with pytest.raises(SourceError, match="not a directory"):
        open_source(str(checkout.path / "a.yaml"), cache_root=cache)
    with pytest.raises(SourceError, match="--worktree"):
        open_source("https://u:pw@example.com/r.git", cache_root=cache, worktree=True)


def test_url_classification_and_redaction() -> None:
    assert not is_remote_url("./deploy")
    assert not is_remote_url("/srv/repo")
    assert not is_remote_url("dir/with:colon")
    assert not is_remote_url("ftp://host/x")
    assert redact_url("https://user:pass@host/x.git") == "https://host/x.git"
    assert redact_url("https://ghp_token@host/x.git") == "https://host/x.git"
    assert redact_url("ssh://git@host/x.git") == "ssh://host/x.git"
    assert redact_url("git@host:x.git") == "git@host:x.git"
    assert redact_url("/local/path") == "/local/path"
    assert (
        redact_text("fatal: unable to access 'https://a:b@h/x/': refused")
        == "fatal: unable to access 'https://h/x/': refused"
    )
