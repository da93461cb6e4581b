"""Real signing keys and signed commits for the signed-commit policy tests: GPG keys made
by the real ``gpg`` (each in its own home), SSH keys by the real ``ssh-keygen``, commits
signed by ``git commit -S``, and a tampered signature (a signed commit whose message was
changed afterwards, keeping the signature)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

AUTHOR_ENV = {
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Lovelace",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _require(program: str, package: str) -> None:
    if shutil.which(program) is None:
        pytest.fail(f"{program} is needed for the signed-commit tests (apt-get install {package})")


def _run(args: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
         stdin: bytes | None = None) -> str:  # fmt: skip
    done = subprocess.run(
        args,
        cwd=cwd,
        env={**os.environ, **AUTHOR_ENV, **(env or {})},
        input=stdin,
        capture_output=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")
        raise AssertionError(f"{' '.join(args)} failed: {output}")
    return done.stdout.decode().strip()


@dataclass(frozen=True)
class GpgKey:
    home: Path  # the GnuPG home holding the secret key
    fingerprint: str
    uid: str

    @property
    def long_id(self) -> str:
        return self.fingerprint[-16:]


@dataclass(frozen=True)
class SshKey:
    private: Path
    public: str  # "ssh-ed25519 AAAA... comment"
    principal: str


Key = GpgKey | SshKey


def gpg_key(folder: Path, uid: str) -> GpgKey:
    """A fresh ed25519 signing key in its own GnuPG home under ``folder``."""
    _require("gpg", "gnupg")
    home = folder / ("gpg-" + re.sub(r"[^A-Za-z0-9]+", "-", uid).strip("-"))
    home.mkdir(mode=0o700, parents=True)
    env = {"GNUPGHOME": str(home)}
    _run(["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key", uid, "ed25519",
          "sign", "never"], env=env)  # fmt: skip
    listing = _run(["gpg", "--batch", "--list-keys", "--with-colons"], env=env)
    fingerprint = next(ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr:"))
    return GpgKey(home, fingerprint, uid)


def trusted_keyring(folder: Path, *keys: GpgKey) -> Path:
    """A GnuPG home holding only the public halves of ``keys`` (``--trusted-keys``)."""
    folder.mkdir(mode=0o700, parents=True)
    for key in keys:
        exported = subprocess.run(
            ["gpg", "--batch", "--export", key.fingerprint],
            env={**os.environ, "GNUPGHOME": str(key.home)},
            capture_output=True,
            check=True,
        ).stdout
        _run(["gpg", "--batch", "--quiet", "--import"], env={"GNUPGHOME": str(folder)},
             stdin=exported)  # fmt: skip
    return folder


def ssh_key(folder: Path, principal: str) -> SshKey:
    """A fresh ed25519 SSH key (no passphrase)."""
    _require("ssh-keygen", "openssh-client")
    folder.mkdir(parents=True, exist_ok=True)
    private = folder / f"ssh-{principal.replace('@', '_at_')}"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(private)])
    public = private.with_name(private.name + ".pub").read_text(encoding="utf-8").strip()
    return SshKey(private, public, principal)


def allowed_signers(path: Path, *keys: SshKey) -> Path:
    """git's allowed-signers file: ``PRINCIPAL KEYTYPE KEY`` per line."""
    path.write_text(
        "".join(f"{k.principal} {' '.join(k.public.split()[:2])}\n" for k in keys),
        encoding="utf-8",
    )
    return path


def commit_signed(repo: Path, files: Mapping[str, str], message: str, key: Key | None) -> str:
    """Write ``files``, commit them signed with ``key`` (unsigned for None); the sha."""
    for name, text in files.items():
        (repo / name).write_text(text, encoding="utf-8")
    _run(["git", "add", "-A", "--", *files], cwd=repo)
    args = ["git", "-c", "commit.gpgsign=false"]
    env: dict[str, str] = {}
    if isinstance(key, GpgKey):
        args += ["-c", "gpg.format=openpgp", "-c", f"user.signingkey={key.fingerprint}"]
        env["GNUPGHOME"] = str(key.home)
    elif isinstance(key, SshKey):
        args += ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key.private}"]
    args += ["commit", "-q", "-m", message]
    if key is not None:
        args.append("-S")
    _run(args, cwd=repo, env=env)
    return _run(["git", "rev-parse", "HEAD"], cwd=repo)


def tamper_last_commit(repo: Path, files: Mapping[str, str]) -> str:
    """Replace HEAD by a copy whose tree has ``files`` changed but whose signature is the
    original one (what an attacker who swaps the content of a signed commit gets); the
    branch points at it. The forged commit's sha."""
    raw = _run(["git", "cat-file", "commit", "HEAD"], cwd=repo)
    header, _, message = raw.partition("\n\n")
    assert "\ngpgsig " in header, "the commit to tamper with is not signed"
    for name, text in files.items():
        (repo / name).write_text(text, encoding="utf-8")
    _run(["git", "add", "-A", "--", *files], cwd=repo)
    tree = _run(["git", "write-tree"], cwd=repo)
    lines = header.split("\n")
    assert lines[0].startswith("tree ")
    forged_text = "\n".join([f"tree {tree}", *lines[1:]]) + "\n\n" + message + "\n"
    forged = (
        subprocess.run(
            ["git", "hash-object", "-t", "commit", "-w", "--stdin"],
            cwd=repo,
            input=forged_text.encode(),
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    branch = _run(["git", "symbolic-ref", "HEAD"], cwd=repo)
    _run(["git", "update-ref", branch, forged], cwd=repo)
    _run(["git", "reset", "-q", "--mixed"], cwd=repo)
    return forged


def stop_agents(*keys: Key | Path) -> None:
    """End the gpg-agents the GPG homes started (teardown)."""
    for item in keys:
        home = item.home if isinstance(item, GpgKey) else item if isinstance(item, Path) else None
        if home is not None:
            subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ,
                           "GNUPGHOME": str(home)}, capture_output=True, check=False)  # fmt: skip


@dataclass(frozen=True)
class Keys:
    """The cast of the signed-commit tests, and the trust files that name two of them."""

    tess: GpgKey  # trusted GPG key
    mallory: GpgKey  # untrusted GPG key
    alice: SshKey  # trusted SSH key
    eve: SshKey  # untrusted SSH key
    trusted_keys: Path  # a GnuPG home with Tess's public key only
    allowed_signers: Path  # Alice's key only

    def flags(self) -> list[str]:
        return [
            "--verify-commits",
            "--trusted-keys",
            str(self.trusted_keys),
            "--allowed-signers",
            str(self.allowed_signers),
        ]

    def stop(self) -> None:
        stop_agents(self.tess, self.mallory, self.trusted_keys)


def make_keys(root: Path) -> Keys:
    tess = gpg_key(root, "Tess Trusted <tess@example.com>")
    mallory = gpg_key(root, "Mallory <mallory@example.com>")
    alice = ssh_key(root, "alice@example.com")
    eve = ssh_key(root, "eve@example.com")
    ring = trusted_keyring(root / "trusted", tess)
    signers = allowed_signers(root / "allowed_signers", alice)
    return Keys(tess, mallory, alice, eve, ring, signers)
