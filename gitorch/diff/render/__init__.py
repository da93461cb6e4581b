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

import json
from collections.abc import Iterator
from typing import Any

import orjson

from gitorch.diff.plan import CHANGES_PER_PIECE, Plan

_ORJSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
#: Keys that are not strings (never in a plan: its digest is written without this option)
#: make orjson refuse; they are then written as the standard encoder would have. Asked
#: for only then: the option costs orjson ~a third more on a first plan of 2,000 Services.
_NON_STR_KEYS = _ORJSON_OPTIONS | orjson.OPT_NON_STR_KEYS


def render_json(plan: Plan) -> str:
    """The plan as JSON text, stable key order, newline-terminated."""
    return json_text(plan.to_json())


def render_json_bytes(plan: Plan) -> bytes:
    """:func:`render_json` as UTF-8 bytes, for a binary stream (a first plan of 2,000
    Services is ~14 MB: decoded to text and encoded again on the way out for nothing)."""
    return json_bytes(plan.to_json())


def render_json_pieces(plan: Plan) -> Iterator[bytes]:
    """:func:`render_json_bytes` piece by piece (joined, the same bytes), to be written as
    they are made: each top-level key's text, the changes :data:`CHANGES_PER_PIECE` at a
    time. A first plan of 2,000 Services is ~14 MB of text (and its digest's ~8 MB):
    made at once, each was paged in anew and written only when all of it was made."""
    out, accepted = plan.json_and_orjson()
    if not accepted:  # (orjson refused the plan: it is written at once, as json_bytes can)
        yield json_bytes(out)
        return
    written = 0
    try:
        for piece in _indented_pieces(out):
            yield piece
            written += len(piece)
    except orjson.JSONEncodeError:  # (not in practice: orjson wrote the same values above)
        yield json_bytes(out)[written:]


def _indented_pieces(out: dict[str, Any]) -> Iterator[bytes]:
    """``orjson.dumps(out, option=_ORJSON_OPTIONS)`` piece by piece: ``{key: value}``
    written alone is that key's line in the whole text with the same indentation (between
    ``{\n`` and ``\n}``), and a list's items likewise between ``[\n`` and ``\n  ]``."""
    options = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
    yield b"{\n"
    for n, key in enumerate(sorted(out)):
        value = out[key]
        separator = b",\n" if n else b""
        if key == "changes" and isinstance(value, list) and len(value) > CHANGES_PER_PIECE:
            opening = len(b"{\n  " + orjson.dumps(key) + b": [\n")
            closing = len(b"\n  ]\n}")
            for start in range(0, len(value), CHANGES_PER_PIECE):
                text = orjson.dumps({key: value[start : start + CHANGES_PER_PIECE]}, option=options)
                if start:
                    yield b",\n" + text[opening:-closing]
                else:
                    yield separator + text[2:-closing]
            yield b"\n  ]"
        else:
            yield separator + orjson.dumps({key: value}, option=options)[2:-2]
    yield b"\n}\n"


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
