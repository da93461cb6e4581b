"""The audit log's hash chain: how an entry is hashed, linked and checked.

Independent of SQLite (any store that keeps entries in order can carry it). Each entry's
``hash`` is::

    sha256(prev_hash + "\\n" + canonical(entry))

where ``canonical`` is the compact, key-sorted JSON of the entry's fields (``at`` as
stored, ``kind``, ``actor``, ``service``, ``revision``, ``message``, ``data`` as the JSON
the store holds, read back) and ``prev_hash`` the hash of the entry before it. The first
entry of a log follows :data:`GENESIS`. Entries written before the chain existed (a store
migrated from an older gitorch) are the *unchained prefix*: the first chained entry
follows :func:`seal` of that prefix, a hash over every prefix entry, so a prefix entry
edited or removed after the chain began is detected as well.

What the chain proves, and what it does not: editing, removing or reordering an entry
breaks a link that :func:`verify` names. Someone who can write the file could recompute
every hash after the entry they changed; what catches that is a head recorded somewhere
else (``gitorch audit --head``, checked with ``--expect ID:HASH``). A store also reports
the highest id it ever handed out, so removing the newest entries is detected too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: The "previous hash" of the very first entry of a log.
GENESIS = "0" * 64

#: Actor of what gitorch did on its own (a restart, drift, a node lost...).
SYSTEM_ACTOR = "gitorch"


@dataclass(frozen=True)
class ChainEntry:
    """One audit entry as the chain sees it (``hash`` None: written before the chain)."""

    id: int
    at: float
    kind: str
    message: str
    actor: str = ""
    service: str | None = None
    revision: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    prev_hash: str | None = None
    hash: str | None = None


def chain_entry_json(entry: ChainEntry) -> dict[str, Any]:
    """``entry`` as JSON, every field as stored (``at`` a number: the hash covers it),
    for a chain verified elsewhere (``GET /api/v1/audit/chain``)."""
    return {
        "id": entry.id,
        "at": entry.at,
        "kind": entry.kind,
        "message": entry.message,
        "actor": entry.actor,
        "service": entry.service,
        "revision": entry.revision,
        "data": dict(entry.data),
        "prevHash": entry.prev_hash,
        "hash": entry.hash,
    }


def chain_entry_of(doc: Mapping[str, Any]) -> ChainEntry:
    """The entry :func:`chain_entry_json` wrote. Raises ValueError for anything else."""
    try:
        entry = ChainEntry(
            id=int(doc["id"]),
            at=float(doc["at"]),
            kind=str(doc["kind"]),
            message=str(doc["message"]),
            actor=str(doc.get("actor") or ""),
            service=_text_or_none(doc.get("service")),
            revision=_text_or_none(doc.get("revision")),
            data=dict(doc.get("data") or {}),
            prev_hash=_text_or_none(doc.get("prevHash")),
            hash=_text_or_none(doc.get("hash")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an audit chain entry: {exc}") from None
    return entry


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def canonical(entry: ChainEntry) -> bytes:
    """The bytes hashed for ``entry`` (its id is not among them: an entry's place is
    given by its link to the previous one)."""
    fields = {
        "at": entry.at,
        "kind": entry.kind,
        "actor": entry.actor,
        "service": entry.service,
        "revision": entry.revision,
        "message": entry.message,
        "data": dict(entry.data),
    }
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def link(prev_hash: str, entry: ChainEntry) -> str:
    """The hash of ``entry`` when it follows ``prev_hash``."""
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + canonical(entry)).hexdigest()


def seal(prefix: Sequence[ChainEntry]) -> str:
    """The hash the first chained entry follows when ``prefix`` (unchained entries,
    oldest first) came before it; :data:`GENESIS` when there are none."""
    if not prefix:
        return GENESIS
    digest = hashlib.sha256(b"gitorch audit seal\n")
    for entry in prefix:
        digest.update(f"{entry.id}\n".encode("ascii"))
        digest.update(canonical(entry) + b"\n")
    return digest.hexdigest()


def next_prev_hash(last_chained: ChainEntry | None, unchained: Sequence[ChainEntry]) -> str:
    """What a new entry follows: the newest chained entry's hash, or (no chained entry
    yet) the seal of every entry already there."""
    if last_chained is not None and last_chained.hash is not None:
        return last_chained.hash
    return seal(unchained)


@dataclass(frozen=True)
class Problem:
    """One break in the chain: the entry it was found at, and what is wrong, in words."""

    entry: int | None
    message: str


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify` found."""

    entries: int  # entries read
    unchained: int  # the prefix written before the chain existed
    head: ChainEntry | None  # the newest chained entry
    problems: tuple[Problem, ...]

    @property
    def intact(self) -> bool:
        return not self.problems


def verify(
    entries: Sequence[ChainEntry],
    *,
    highest_id: int | None = None,
    expected: Mapping[int, str] | None = None,
) -> Verdict:
    """Check every link of ``entries`` (all of them, in id order).

    ``highest_id``: the highest id the store ever handed out (SQLite's AUTOINCREMENT
    sequence), so removing the newest entries shows. ``expected``: heads recorded
    elsewhere (``{id: hash}``) that must still be in the chain, unchanged.
    """
    problems: list[Problem] = []
    ordered = sorted(entries, key=lambda e: e.id)
    by_hash = {e.hash: e for e in ordered if e.hash is not None}
    first = next((i for i, e in enumerate(ordered) if e.hash is not None), len(ordered))
    prefix = ordered[:first]
    expected_prev = seal(prefix)
    previous: ChainEntry | None = prefix[-1] if prefix else None
    head: ChainEntry | None = None
    for entry in ordered[first:]:
        if entry.hash is None or entry.prev_hash is None:
            problems.append(
                Problem(entry.id, f"#{entry.id} carries no hash: it was written around the chain")
            )
            continue
        if link(entry.prev_hash, entry) != entry.hash:
            problems.append(
                Problem(entry.id, f"#{entry.id} was edited: its content does not match its hash")
            )
        if entry.prev_hash != expected_prev:
            problems.append(_broken_link(entry, previous, prefix, by_hash))
        expected_prev = entry.hash
        previous = entry
        head = entry
    if highest_id is not None and ordered and highest_id > ordered[-1].id:
        gone = highest_id - ordered[-1].id
        problems.append(
            Problem(
                None,
                f"the newest {gone} entr{'y' if gone == 1 else 'ies'} after #{ordered[-1].id} "
                f"{'was' if gone == 1 else 'were'} removed (the log had reached #{highest_id})",
            )
        )
    elif highest_id and not ordered:
        problems.append(
            Problem(None, f"every entry was removed (the log had reached #{highest_id})")
        )
    for entry_id, wanted in sorted((expected or {}).items()):
        found = next((e for e in ordered if e.id == entry_id), None)
        if found is None:
            problems.append(Problem(entry_id, f"the recorded head #{entry_id} is not in the log"))
        elif found.hash != wanted:
            problems.append(
                Problem(
                    entry_id,
                    f"#{entry_id} is not the entry that was recorded (hash {wanted[:12]}, "
                    f"now {(found.hash or 'none')[:12]}): the chain was rewritten from there",
                )
            )
    return Verdict(len(ordered), len(prefix), head, tuple(problems))


def _broken_link(
    entry: ChainEntry,
    previous: ChainEntry | None,
    prefix: Sequence[ChainEntry],
    by_hash: Mapping[str, ChainEntry],
) -> Problem:
    """Why ``entry`` does not follow ``previous``, as precisely as the hashes tell."""
    assert entry.prev_hash is not None
    target = by_hash.get(entry.prev_hash)
    after = f"#{previous.id}" if previous is not None else "the start of the log"
    if target is not None and target.id != entry.id:
        return Problem(
            entry.id,
            f"#{entry.id} was moved: in the chain it follows #{target.id}, here it comes "
            f"after {after} (entries reordered)",
        )
    if previous is not None and previous.hash is None and prefix:
        return Problem(
            entry.id,
            f"the {len(prefix)} entries written before the chain began (up to #{prefix[-1].id}) "
            "were changed: their seal does not match",
        )
    if entry.prev_hash == seal(()) and previous is not None:
        return Problem(
            entry.id,
            f"the entries before #{entry.id} were changed: it began the chain, with nothing before it",
        )
    return Problem(
        entry.id,
        f"#{entry.id} does not follow {after}: an entry between them was removed, "
        f"or {after} was rewritten",
    )
