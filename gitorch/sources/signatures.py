"""Who signed a commit, as far as this machine can tell.

``git log`` asks gpg to verify each signed commit (``%G?``, ``%GS``, ``%GK``). What
gitorch records in :attr:`CommitInfo.signer`:

* unsigned commit: ``None``;
* a good signature gpg can verify with the keys of the running user's keyring
  (``%G?`` is ``G``, or ``U`` = good but the key's owner is not certified): the signer's
  user id (``%GS``, e.g. ``Alice <alice@example.com>``), or the key id when gpg gives no
  user id;
* anything else (no public key, bad or expired signature, revoked key, gpg missing, an SSH
  signature without an allowed-signers file): ``unverified:<KEYID>``, the 16-hex-digit
  long key id of the issuer as git would print it, read from the signature packet itself
  when gpg could not tell; plain ``unverified`` when even that cannot be parsed.

:attr:`CommitInfo.signature_status` keeps git's verdict in words (``good``,
``good-untrusted``, ``bad``, ``no-public-key``, ...), so a signature policy can be stricter
than "verified".
"""

from __future__ import annotations

import base64
import binascii

#: git's %G? letters, in words.
STATUS_WORDS = {
    "G": "good",
    "U": "good-untrusted",
    "X": "good-expired-signature",
    "Y": "good-expired-key",
    "R": "good-revoked-key",
    "B": "bad",
    "E": "no-public-key",
    "N": "none",
}

_VERIFIED = ("G", "U")


def signer_for(status: str, gpg_signer: str, gpg_key: str, raw_signature: str) -> str | None:
    """The :attr:`CommitInfo.signer` value from git's %G?/%GS/%GK and the raw gpgsig header."""
    if status in ("N", "") and not raw_signature:
        return None
    if status in _VERIFIED:
        return gpg_signer or gpg_key or "unknown"
    key = gpg_key or issuer_key_id(raw_signature) or ""
    return f"unverified:{key}" if key else "unverified"


def status_word(status: str, raw_signature: str) -> str | None:
    """The verdict in words, ``None`` for an unsigned commit."""
    if status in ("N", "") and not raw_signature:
        return None
    if status in ("N", ""):
        # Signed, but git did not (could not) check it, e.g. an SSH signature.
        return "unchecked"
    return STATUS_WORDS.get(status, "unknown")


def issuer_key_id(armored: str) -> str | None:
    """The long key id (16 upper-case hex digits) of an ASCII-armoured OpenPGP signature.

    Reads the issuer fingerprint (subpacket 33) or issuer key id (subpacket 16) of the
    first signature packet; ``None`` when the text is not an OpenPGP signature or is
    malformed. Never raises: the input comes from whoever made the commit.
    """
    data = _dearmor(armored)
    if data is None:
        return None
    try:
        return _issuer_from_packets(data)
    except (IndexError, ValueError):
        return None


def _dearmor(armored: str) -> bytes | None:
    lines = [ln.strip() for ln in armored.strip().splitlines()]
    if not lines or lines[0] != "-----BEGIN PGP SIGNATURE-----":
        return None
    body: list[str] = []
    in_headers = True
    for ln in lines[1:]:
        if ln.startswith("-----END"):
            break
        if in_headers:
            # Armour headers ("Version: ...") end at the first blank line; a body line
            # never contains ": ".
            if ln == "":
                in_headers = False
                continue
            if ": " in ln:
                continue
            in_headers = False
        if ln.startswith("="):  # CRC-24 checksum line
            break
        body.append(ln)
    try:
        return base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError):
        return None


def _packet(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, body start, body length) of the OpenPGP packet at ``pos``."""
    first = data[pos]
    if not first & 0x80:
        raise ValueError("not a packet")
    if first & 0x40:  # new format
        tag = first & 0x3F
        o1 = data[pos + 1]
        if o1 < 192:
            return tag, pos + 2, o1
        if o1 < 224:
            return tag, pos + 3, ((o1 - 192) << 8) + data[pos + 2] + 192
        if o1 == 255:
            return tag, pos + 6, int.from_bytes(data[pos + 2 : pos + 6], "big")
        raise ValueError("partial body lengths are not used for signatures")
    tag = (first >> 2) & 0x0F
    size_bytes = {0: 1, 1: 2, 2: 4}.get(first & 0x03)
    if size_bytes is None:
        return tag, pos + 1, len(data) - pos - 1
    length = int.from_bytes(data[pos + 1 : pos + 1 + size_bytes], "big")
    return tag, pos + 1 + size_bytes, length


def _issuer_from_packets(data: bytes) -> str | None:
    tag, start, length = _packet(data, 0)
    if tag != 2:  # signature packet
        return None
    body = data[start : start + length]
    version = body[0]
    if version == 3:
        return body[7:15].hex().upper() or None
    if version not in (4, 5, 6):
        return None
    size_len = 4 if version == 6 else 2
    pos = 4
    key_id: str | None = None
    for _area in ("hashed", "unhashed"):
        area_len = int.from_bytes(body[pos : pos + size_len], "big")
        pos += size_len
        area = body[pos : pos + area_len]
        pos += area_len
        found = _issuer_from_subpackets(area)
        if found and len(found) > 16:
            return found[-16:] if version == 4 else found[:16]
        key_id = key_id or found
    return key_id


def _issuer_from_subpackets(area: bytes) -> str | None:
    """Issuer fingerprint (preferred) or key id from one subpacket area, as upper hex."""
    pos = 0
    key_id: str | None = None
    while pos < len(area):
        o1 = area[pos]
        if o1 < 192:
            length, pos = o1, pos + 1
        elif o1 < 255:
            length, pos = ((o1 - 192) << 8) + area[pos + 1] + 192, pos + 2
        else:
            length, pos = int.from_bytes(area[pos + 1 : pos + 5], "big"), pos + 5
        if length == 0:
            raise ValueError("empty subpacket")
        kind = area[pos] & 0x7F
        value = area[pos + 1 : pos + length]
        pos += length
        if kind == 33 and len(value) > 1:  # issuer fingerprint: version byte + fingerprint
            return value[1:].hex().upper()
        if kind == 16 and len(value) == 8:
            key_id = value.hex().upper()
    return key_id
