"""commands.common.write_pieces: output written by a thread while the next piece is made."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from gitorch.commands.common import write_pieces


def test_every_piece_is_written_in_order() -> None:
    out = io.BytesIO()
    pieces = [bytes([65 + i % 26]) * (i * 1000) for i in range(50)]
    write_pieces(out, iter(pieces))
    assert out.getvalue() == b"".join(pieces)


class _Leaving(io.RawIOBase):
    """A reader that goes away after ``keep`` bytes (as `| head -c`)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.got = b""

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if len(self.got) >= self.keep:
            raise BrokenPipeError(32, "Broken pipe")
        self.got += bytes(data)
        return len(data)


def test_an_error_writing_stops_the_making_and_is_raised() -> None:
    made: list[int] = []

    def pieces() -> Iterator[bytes]:
        for i in range(1000):
            made.append(i)
            yield b"x" * 100

    with pytest.raises(BrokenPipeError):
        write_pieces(io.BufferedWriter(_Leaving(1000), buffer_size=64), pieces())
    assert len(made) < 1000  # the making stopped once the writing failed


def test_an_error_making_a_piece_is_raised_after_what_was_made_is_written() -> None:
    out = io.BytesIO()

    def pieces() -> Iterator[bytes]:
        yield b"first"
        raise ValueError("no second piece")

    with pytest.raises(ValueError, match="no second piece"):
        write_pieces(out, pieces())
    assert out.getvalue() == b"first"
