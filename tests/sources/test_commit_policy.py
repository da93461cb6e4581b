"""The signed-commit policy against real keys (gpg, ssh-keygen) and real repositories:
unsigned, unknown-key and tampered commits are refused, for GPG and SSH each, through a
local checkout and through the bare cache of a remote; only the policy's keys count."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from signing_helpers import Keys, commit_signed, make_keys, tamper_last_commit
from sources_helpers import git, init_checkout

from gitorch.errors import SourceError
from gitorch.sources import GitSource, LocalRepoSource, Source, WorktreeSource
from gitorch.sources.verify import PolicyConfigError, SignaturePolicy, judge


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    made = make_keys(tmp_path_factory.mktemp("keys"))
    yield made
    made.stop()


@pytest.fixture(scope="module")
def policy(keys: Keys) -> SignaturePolicy:
    return SignaturePolicy(keys.trusted_keys, keys.allowed_signers)


def verdicts(source: Source, shas: dict[str, str], policy: SignaturePolicy) -> dict[str, str]:
    return {name: source.verify(sha, policy).reason for name, sha in shas.items()}


def make_history(repo: Path, keys: Keys) -> dict[str, str]:
    shas = {
        "unsigned": commit_signed(repo, {"a.yaml": "a: 1\n"}, "unsigned", None),
        "gpg-trusted": commit_signed(repo, {"a.yaml": "a: 2\n"}, "by tess", keys.tess),
        "gpg-unknown": commit_signed(repo, {"a.yaml": "a: 3\n"}, "by mallory", keys.mallory),
        "ssh-trusted": commit_signed(repo, {"a.yaml": "a: 4\n"}, "by alice", keys.alice),
        "ssh-unknown": commit_signed(repo, {"a.yaml": "a: 5\n"}, "by eve", keys.eve),
        "ssh-signed": commit_signed(repo, {"a.yaml": "a: 6\n"}, "by alice again", keys.alice),
    }
    shas["ssh-tampered"] = tamper_last_commit(repo, {"a.yaml": "a: evil\n"})
    git(repo, "reset", "-q", "--hard", shas["ssh-signed"])
    commit_signed(repo, {"a.yaml": "a: 7\n"}, "by tess again", keys.tess)
    shas["gpg-tampered"] = tamper_last_commit(repo, {"a.yaml": "a: evil too\n"})
    return shas


EXPECTED = {
    "unsigned": "unsigned",
    "gpg-trusted": "signed by Tess Trusted <tess@example.com>",
    "gpg-unknown": "signed by an unknown key {mallory} (not in --trusted-keys)",
    "ssh-trusted": "signed by alice@example.com",
    "ssh-unknown": "signed by an unknown key {eve} (in no line of --allowed-signers)",
    "ssh-tampered": "bad signature",
    "gpg-tampered": "bad signature (key {tess})",
}


def expected(keys: Keys, fingerprints: dict[str, str]) -> dict[str, str]:
    values = {"mallory": keys.mallory.long_id, "tess": keys.tess.long_id, **fingerprints}
    return {name: text.format(**values) for name, text in EXPECTED.items()}


def test_local_checkout_verdicts(tmp_path: Path, keys: Keys, policy: SignaturePolicy) -> None:
    repo = init_checkout(tmp_path / "repo").path
    shas = make_history(repo, keys)
    source = LocalRepoSource(repo)
    try:
        found = verdicts(source, {k: v for k, v in shas.items() if k != "ssh-signed"}, policy)
        eve = source.verify(shas["ssh-unknown"], policy).key
        assert eve is not None and eve.startswith("SHA256:")
        assert found == expected(keys, {"eve": eve})
        trusted = {n for n, sha in shas.items() if source.verify(sha, policy).trusted}
        assert trusted == {"gpg-trusted", "ssh-trusted", "ssh-signed"}
        tess = source.verify(shas["gpg-trusted"], policy)
        assert (tess.kind, tess.signer, tess.key) == (
            "openpgp",
            "Tess Trusted <tess@example.com>",
            keys.tess.long_id,
        )
        assert tess.refusal.startswith(f"commit {shas['gpg-trusted'][:12]} is not trusted")
        bad = source.verify(shas["gpg-tampered"], policy)
        assert bad.refusal == f"commit {shas['gpg-tampered'][:12]} is not trusted: " + (
            f"bad signature (key {keys.tess.long_id})"
        )
    finally:
        source.close()


def test_remote_cache_verdicts_are_the_same(
    tmp_path: Path, keys: Keys, policy: SignaturePolicy
) -> None:
    bare = tmp_path / "remote.git"
    bare.mkdir()
    git(bare, "init", "-q", "--bare", "-b", "main")
    work = init_checkout(tmp_path / "work")
    shas = make_history(work.path, keys)
    work.git("push", "-q", "--force", bare.as_uri(), f"{shas['gpg-tampered']}:refs/heads/main")
    work.git("push", "-q", bare.as_uri(), f"{shas['ssh-tampered']}:refs/heads/forged")
    source = GitSource(bare.as_uri(), tmp_path / "cache")
    try:
        source.fetch()
        for name in ("unsigned", "gpg-trusted", "ssh-trusted", "ssh-tampered", "gpg-tampered"):
            local = expected(keys, {"eve": ""})[name]
            assert source.verify(shas[name], policy).reason == local, name
        assert not source.verify("main", policy).trusted
    finally:
        source.close()


def test_only_the_policys_keys_count(
    tmp_path: Path, keys: Keys, policy: SignaturePolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's own keyring knows Mallory: still an unknown key for the policy. A
    policy with one kind of keys refuses the other kind."""
    monkeypatch.setenv("GNUPGHOME", str(keys.mallory.home))
    repo = init_checkout(tmp_path / "repo").path
    by_mallory = commit_signed(repo, {"a.yaml": "a: 1\n"}, "mallory", keys.mallory)
    by_tess = commit_signed(repo, {"a.yaml": "a: 2\n"}, "tess", keys.tess)
    by_alice = commit_signed(repo, {"a.yaml": "a: 3\n"}, "alice", keys.alice)
    source = LocalRepoSource(repo)
    try:
        assert not source.verify(by_mallory, policy).trusted
        gpg_only = SignaturePolicy(trusted_keys=policy.trusted_keys)
        ssh_only = SignaturePolicy(allowed_signers=policy.allowed_signers)
        assert source.verify(by_tess, gpg_only).trusted
        refused = source.verify(by_alice, gpg_only)
        assert not refused.trusted
        assert refused.reason.startswith("signed by an unknown key SHA256:")
        assert refused.reason.endswith("(SSH, and no --allowed-signers given)")
        assert source.verify(by_alice, ssh_only).trusted
        assert source.verify(by_tess, ssh_only).reason == (
            f"signed by an unknown key {keys.tess.long_id} (GPG, and no --trusted-keys given)"
        )
    finally:
        source.close()


def test_a_worktree_has_no_signature(tmp_path: Path, keys: Keys, policy: SignaturePolicy) -> None:
    repo = init_checkout(tmp_path / "repo").path
    commit_signed(repo, {"a.yaml": "a: 1\n"}, "tess", keys.tess)
    with pytest.raises(SourceError, match="has no signature"):
        WorktreeSource(repo).verify("HEAD", policy)


def test_policy_configuration_errors(tmp_path: Path, policy: SignaturePolicy) -> None:
    with pytest.raises(PolicyConfigError, match="needs the trusted keys"):
        SignaturePolicy()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PolicyConfigError, match="holds no GnuPG keyring"):
        SignaturePolicy(trusted_keys=empty).check()
    with pytest.raises(PolicyConfigError, match="not a directory"):
        SignaturePolicy(trusted_keys=tmp_path / "missing").check()
    with pytest.raises(PolicyConfigError, match="no such readable file"):
        SignaturePolicy(allowed_signers=tmp_path / "missing").check()
    policy.check()


def test_judge_words() -> None:
    policy = SignaturePolicy(trusted_keys=Path("/keys"), allowed_signers=Path("/signers"))
    sha = "f" * 40
    assert (
        judge(sha, "openpgp", "Y", "", "ABCD", policy).reason
        == "signed by an expired key (key ABCD)"
    )
    assert (
        judge(sha, "openpgp", "R", "", "ABCD", policy).reason
        == "signed by a revoked key (key ABCD)"
    )
    assert judge(sha, "openpgp", "X", "", "ABCD", policy).reason == (
        "the signature has expired (key ABCD)"
    )
    assert not judge(sha, "x509", "", "", "", policy).trusted
    assert not judge(sha, "ssh", "G", "", "SHA256:x", policy).trusted  # no principal
