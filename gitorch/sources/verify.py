"""The signed-commit policy: is this commit signed by a key the operator trusts?

``--verify-commits`` with ``--trusted-keys DIR`` (a GnuPG home holding the trusted public
keys and nothing else that matters) and/or ``--allowed-signers FILE`` (git's SSH
allowed-signers format, ``gpg.ssh.allowedSignersFile``). git itself verifies, as ``git
verify-commit`` would, with only those keys: ``GNUPGHOME=DIR`` for OpenPGP signatures,
``-c gpg.ssh.allowedSignersFile=FILE`` for SSH ones; the daemon's own keyring and git
configuration never count.

The verdict, per signature kind:

* OpenPGP: a good signature by a key in DIR is trusted (``%G?`` G, or U: DIR *is* the
  operator's statement of trust, ownertrust is not asked for). E (no such key in DIR) is
  ``unknown key``; B ``bad signature``; X, Y, R an expired signature, an expired or a
  revoked key.
* SSH: G (good, and the key belongs to a principal of FILE) is trusted; U (good, but the
  key is in no line of FILE) is ``unknown key``; B ``bad signature``.
* no signature: ``unsigned``; an X.509 (gpgsm) signature: ``unsupported signature``.

What is verified is the commit that would be applied, the tip of the ref: a signed merge
vouches for what it merges, as with Flux and Argo CD. Keys are read at every
verification, so adding or removing one takes effect at the next commit without a
restart (docs/architecture.md, Trust, has the key rotation steps).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gitorch.errors import ConfigError, SourceError

SignatureKind = Literal["openpgp", "ssh", "x509"]


class PolicyConfigError(ConfigError):
    """``--trusted-keys`` / ``--allowed-signers`` cannot be used as given."""


class CommitNotTrusted(SourceError):
    """The commit is not signed by a key the policy trusts (``plan``/``apply`` refuse it)."""


@dataclass(frozen=True)
class SignaturePolicy:
    """Which keys may sign a commit that gitorch applies."""

    trusted_keys: Path | None = None  # a GnuPG home directory
    allowed_signers: Path | None = None  # git's SSH allowed-signers file

    def __post_init__(self) -> None:
        if self.trusted_keys is None and self.allowed_signers is None:
            raise PolicyConfigError(
                "--verify-commits needs the trusted keys: --trusted-keys DIR (a GnuPG home) "
                "and/or --allowed-signers FILE (git's SSH allowed-signers format)"
            )

    def check(self) -> None:
        """Refuse what cannot work (a missing keyring or file, no gpg or ssh-keygen)
        before anything is fetched or applied."""
        if self.trusted_keys is not None:
            home = self.trusted_keys
            if not home.is_dir():
                raise PolicyConfigError(f"--trusted-keys {home}: not a directory")
            if not any((home / name).is_file() for name in ("pubring.kbx", "pubring.gpg")):
                raise PolicyConfigError(
                    f"--trusted-keys {home} holds no GnuPG keyring",
                    detail=(f"import the trusted keys: gpg --homedir {home} --import KEY.asc",),
                )
            if shutil.which("gpg") is None:
                raise PolicyConfigError("--trusted-keys needs gpg (apt-get install gnupg)")
        if self.allowed_signers is not None:
            path = self.allowed_signers
            if not path.is_file() or not os.access(path, os.R_OK):
                raise PolicyConfigError(f"--allowed-signers {path}: no such readable file")
            if shutil.which("ssh-keygen") is None:
                raise PolicyConfigError(
                    "--allowed-signers needs ssh-keygen (apt-get install openssh-client)"
                )


@dataclass(frozen=True)
class Verification:
    """The policy's verdict on one commit."""

    sha: str
    trusted: bool
    reason: str  # "signed by ..." when trusted; why not otherwise ("unsigned", ...)
    kind: SignatureKind | None = None
    signer: str | None = None  # who the trusted key belongs to (gpg user id, ssh principal)
    key: str | None = None  # the key's id or fingerprint, as git reports it

    @property
    def refusal(self) -> str:
        """The one-line reason a refused commit gives, naming the commit."""
        return f"commit {self.sha[:12]} is not trusted: {self.reason}"

    def to_json(self) -> dict[str, object]:
        return {
            "policy": "signature",
            "trusted": self.trusted,
            "reason": self.reason,
            "signature": self.kind,
            "signer": self.signer,
            "key": self.key,
        }


def signature_kind(raw: str) -> SignatureKind | None:
    """The kind of a commit's ``gpgsig`` header (None: unsigned)."""
    text = raw.lstrip()
    if not text:
        return None
    if text.startswith("-----BEGIN SSH SIGNATURE-----"):
        return "ssh"
    if text.startswith("-----BEGIN PGP SIGNATURE-----"):
        return "openpgp"
    return "x509"


#: What %G? letters mean for a signature the policy could check, when not trusted.
_OPENPGP_REFUSALS = {
    "B": "bad signature",
    "E": "signed by an unknown key",
    "X": "the signature has expired",
    "Y": "signed by an expired key",
    "R": "signed by a revoked key",
}


def judge(
    sha: str,
    kind: SignatureKind | None,
    status: str,
    signer: str,
    key: str,
    policy: SignaturePolicy,
) -> Verification:
    """The verdict from git's ``%G?``/``%GS``/``%GK`` (pure: the git call is elsewhere)."""
    shown_key = key or None
    if kind is None:
        return Verification(sha, False, "unsigned")
    if kind == "x509":
        return Verification(sha, False, "unsupported signature (X.509): sign with GPG or SSH", kind)
    if kind == "openpgp":
        if policy.trusted_keys is None:
            why = _unknown(key, "GPG, and no --trusted-keys given")
            return Verification(sha, False, why, kind, key=shown_key)
        if status in ("G", "U"):
            return Verification(
                sha, True, f"signed by {signer or key}", kind, signer or None, shown_key
            )
        why = _OPENPGP_REFUSALS.get(status, f"signature not verified (git status {status!r})")
        if status == "E":
            why = _unknown(key, "not in --trusted-keys")
        elif key and status in ("B", "X", "Y", "R"):
            why = f"{why} (key {key})"
        return Verification(sha, False, why, kind, key=shown_key)
    # ssh
    if policy.allowed_signers is None:
        why = _unknown(key, "SSH, and no --allowed-signers given")
        return Verification(sha, False, why, kind, key=shown_key)
    if status == "G" and signer:
        return Verification(sha, True, f"signed by {signer}", kind, signer, shown_key)
    if status == "B":
        return Verification(sha, False, "bad signature", kind, key=shown_key)
    if status == "U":
        why = _unknown(key, "in no line of --allowed-signers")
        return Verification(sha, False, why, kind, key=shown_key)
    return Verification(
        sha, False, f"signature not verified (git status {status!r})", kind, key=shown_key
    )


def _unknown(key: str, why: str) -> str:
    return f"signed by an unknown key{' ' + key if key else ''} ({why})"
