"""Renderers of a :class:`~gitorch.diff.plan.Plan`: text (people), markdown (PRs), JSON.

The JSON form is ``Plan.to_json()`` (see ``docs/cli.md``); it is deterministic, so the
same plan renders byte-identically every time.

JSON text is written by orjson: the standard library's encoder runs in Python as soon as
``indent`` is asked for, and a first plan of 2,000 Services (every object a change, ~2
million values) took longer to render than to make (bench/bench_cli_start.py). orjson
writes the same text (2-space indent, sorted keys, raw UTF-8, the same escapes) except
for floats in exponent form (``1e-5`` where Python writes ``1e-05``: the same number);
what it refuses (an integer beyond 64 bits) goes through the standard encoder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import orjson

from gitorch.diff.plan import CHANGES_PER_PIECE, Plan, float_forms_differ, standard_digest

_ORJSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
#: Keys that are not strings (never in a plan: its digest is written without this option)
#: make orjson refuse; they are then written as the standard encoder would have. Asked
#: for only then: the option costs orjson ~a third more on a first plan of 2,000 Services.
_NON_STR_KEYS = _ORJSON_OPTIONS | orjson.OPT_NON_STR_KEYS


def render_json(plan: Plan) -> str:
    """The plan as JSON text, stable key order, newline-terminated."""
    return render_json_bytes(plan).decode("utf-8")


def render_json_bytes(plan: Plan) -> bytes:
    """:func:`render_json` as UTF-8 bytes, for a binary stream (a first plan of 2,000
    Services is ~14 MB: decoded to text and encoded again on the way out for nothing):
    :func:`render_json_pieces` joined, which is ``json_bytes(plan.to_json())``."""
    return b"".join(render_json_pieces(plan))


def render_json_pieces(plan: Plan) -> Iterator[bytes]:
    """:func:`render_json_bytes` piece by piece (joined, the same bytes), to be written as
    they are made: each top-level key's text, the changes :data:`CHANGES_PER_PIECE` at a
    time, their JSON made for the piece and let go after it (so is the digest's compact
    text, hashed as it is made: ``"changes"`` sorts before ``"digest"``). A first plan of
    2,000 Services is ~14 MB of text, ~8 MB of digested text and ~10^5 dicts: made at
    once, all were paged in anew, and nothing was written until all was made.

    Where the digest's text must be the standard encoder's (float forms), it is made
    from the whole body then, and the pieces from there on are held until the end; where
    orjson refuses the plan (an integer beyond 64 bits), what is left is written as
    :func:`json_bytes` writes the whole, whose start is what was written (orjson and the
    standard encoders write the same text but for those float forms, and NaN/Infinity:
    null by orjson; a plan holding both such an integer and, before it, a NaN has null
    there where the standard encoder alone wrote NaN)."""
    body = plan.body(changes=False)
    out = {**body, "digest": ""}
    if plan.autoscaled:
        out["autoscaled"] = [a.to_json() for a in plan.autoscaled]
    keys = sorted(out)
    after = keys[keys.index("digest") + 1 :]
    sha = hashlib.sha256()
    same_forms = True  # the digested text so far is orjson's
    held: list[bytes] = []  # the pieces from the first whose float forms differ on
    written = 0
    options = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS

    def digested(piece: bytes) -> None:
        """Hash a piece of the digest's text, while its float forms are the same."""
        nonlocal same_forms
        if same_forms and float_forms_differ(piece):
            same_forms = False
        if same_forms:
            sha.update(piece)

    try:
        digested(b"{")
        pieces = [b"{\n"]
        for n, key in enumerate(keys):
            if key == "digest":
                break
            separator = b",\n" if n else b""
            head = separator[:1] + orjson.dumps(key) + b":"
            if key != "changes" or not plan.changes:
                digested(head + orjson.dumps(body[key], option=orjson.OPT_SORT_KEYS))
                pieces.append(separator + orjson.dumps({key: out[key]}, option=options)[2:-2])
                continue
            digested(head + b"[")
            opening = len(b'{\n  "changes": [\n')
            closing = len(b"\n  ]\n}")
            for start in range(0, len(plan.changes), CHANGES_PER_PIECE):
                dicts = [c.to_json() for c in plan.changes[start : start + CHANGES_PER_PIECE]]
                text = orjson.dumps(dicts, option=orjson.OPT_SORT_KEYS)
                digested((b"," if start else b"") + text[1:-1])
                text = orjson.dumps({key: dicts}, option=options)
                del dicts
                if start:
                    pieces.append(b",\n" + text[opening:-closing])
                else:
                    pieces.append(separator + text[2:-closing])
                if not same_forms:
                    held.extend(pieces)
                    pieces.clear()
                    continue
                for piece in pieces:
                    yield piece
                    written += len(piece)
                pieces.clear()
            pieces.append(b"\n  ]")
            digested(b"]")
        for key in after:
            value = orjson.dumps(body[key], option=orjson.OPT_SORT_KEYS)
            digested(b"," + orjson.dumps(key) + b":" + value)
        digested(b"}")
        digest = sha.hexdigest() if same_forms else standard_digest(plan.body())
        pieces.append(b",\n" + orjson.dumps({"digest": digest}, option=options)[2:-2])
        for key in after:
            pieces.append(b",\n" + orjson.dumps({key: out[key]}, option=options)[2:-2])
        pieces.append(b"\n}\n")
    except orjson.JSONEncodeError:  # (what was written has the same float forms)
        yield json_bytes(plan.to_json())[written:]
        return
    yield from held
    yield from pieces


def json_text(value: object) -> str:
    """``value`` as indented JSON text with sorted keys, newline-terminated."""
    return json_bytes(value).decode("utf-8")


def json_bytes(value: object) -> bytes:
    """:func:`json_text` as UTF-8 bytes."""
    for options in (_ORJSON_OPTIONS, _NON_STR_KEYS):
        try:
            return orjson.dumps(value, option=options)
        except orjson.JSONEncodeError:
            continue
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return text.encode("utf-8")
