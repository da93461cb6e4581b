"""Commit signatures: verified signer, unverified key id, and the OpenPGP issuer parser."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sources_helpers import Checkout

from gitorch.sources import LocalRepoSource
from gitorch.sources.signatures import issuer_key_id, signer_for


@dataclass
class Key:
    home: Path
    fingerprint: str


def _gpg(home: Path, *args: str) -> str:
    done = subprocess.run(
        ["gpg", "--batch", "--quiet", *args],
        env={**os.environ, "GNUPGHOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def _kill_agent(home: Path) -> None:
    subprocess.run(
        ["gpgconf", "--kill", "gpg-agent"],
        env={**os.environ, "GNUPGHOME": str(home)},
        check=False,
        capture_output=True,
    )


@pytest.fixture
def signing_key(tmp_path: Path) -> Iterator[Key]:
    if shutil.which("gpg") is None:
        pytest.fail("gpg is needed for signature tests (apt-get install gnupg)")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    _gpg(
        home,
        "--passphrase",
        "",
        "--quick-gen-key",
        "Sam Signer <sam@example.com>",
        "ed25519",
        "sign",
        "never",
    )
    fpr = next(
        line.split(":")[9]
        for line in _gpg(home, "--list-keys", "--with-colons").splitlines()
        if line.startswith("fpr:")
    )
    yield Key(home, fpr)
    _kill_agent(home)


def test_signed_commits_report_their_signer(
    checkout: Checkout,
    signing_key: Key,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    closing: list[object],
) -> None:
    checkout.write("a.yaml", "a: 1\n")
    unsigned = checkout.commit("unsigned")
    checkout.write("a.yaml", "a: 2\n")
    home_env = {"GNUPGHOME": str(signing_key.home)}
    checkout.git("add", "-A")
    checkout.git(
        "-c",
        f"user.signingkey={signing_key.fingerprint}",
        "commit",
        "-q",
        "-S",
        "-m",
        "signed",
        env=home_env,
    )
    signed = checkout.git("rev-parse", "HEAD")
    long_id = signing_key.fingerprint[-16:]

    # With the key in the keyring: gpg verifies, the signer is the key's user id.
    monkeypatch.setenv("GNUPGHOME", str(signing_key.home))
    source = LocalRepoSource(checkout.path)
    closing.append(source)
    newest, oldest = source.history()
    assert newest.sha == signed and oldest.sha == unsigned
    assert newest.signer == "Sam Signer <sam@example.com>"
    assert newest.signature_status == "good"
    assert newest.signature_key == long_id
    assert (oldest.signer, oldest.signature_status, oldest.signature_key) == (None, None, None)

    # With an empty keyring: the signature is noticed, but only the key id is known.
    empty = tmp_path / "empty-gnupg"
    empty.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(empty))
    try:
        [info] = list(source.history(limit=1))
    finally:
        _kill_agent(empty)
    assert info.signer == f"unverified:{long_id}"
    assert info.signature_status == "no-public-key"

    # The issuer parser agrees with gpg on the raw signature header.
    raw = checkout.git("cat-file", "commit", signed)
    armored = raw.split("gpgsig ", 1)[1].split("-----END PGP SIGNATURE-----")[0]
    armored = (
        "\n".join(line.strip() for line in armored.splitlines()) + "\n-----END PGP SIGNATURE-----"
    )
    assert issuer_key_id(armored) == long_id


def test_signer_without_gpg_falls_back_to_the_parsed_key() -> None:
    assert signer_for("N", "", "", "") is None
    assert signer_for("G", "Sam <s@x>", "ABCD", "sig") == "Sam <s@x>"
    assert signer_for("B", "Sam <s@x>", "ABCD", "sig") == "unverified:ABCD"
    assert signer_for("N", "", "", "-----BEGIN SSH SIGNATURE-----\nxx\n") == "unverified"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "-----BEGIN PGP SIGNATURE-----\n\n!!!notbase64\n-----END PGP SIGNATURE-----",
        "-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----",
        "-----BEGIN PGP SIGNATURE-----\n\nwsA=\n-----END PGP SIGNATURE-----",
    ],
)
def test_issuer_parser_never_raises_on_junk(text: str) -> None:
    assert issuer_key_id(text) is None
