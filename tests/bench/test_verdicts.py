"""The benchmarks' ``@verdict`` lines and the table ``run_all.py`` builds from them."""

from __future__ import annotations

import run_all
from verdicts import Verdict, emit, parse, word


def test_an_emitted_verdict_reads_back(capsys) -> None:
    emit(
        "plan 2,000",
        "1,824 ms",
        against="validate (1,067 ms)",
        ratio="1.71x",
        goal="<= 1.5x",
        met=False,
    )
    emit("audit appends", "3,544/s")
    printed = capsys.readouterr().out
    assert parse(printed) == [
        Verdict("plan 2,000", "1,824 ms", "validate (1,067 ms)", "1.71x", "<= 1.5x", False),
        Verdict("audit appends", "3,544/s", "-", "", "-", None),
    ]


def test_only_verdict_lines_become_rows() -> None:
    """A benchmark's own table (a header that ends in "met", a line that says "NOT met")
    is never read as a figure; a broken verdict line is skipped, not guessed at."""
    output = "\n".join(
        [
            "| figure | value | goal | met |",
            "no-op pass 869 ms < 1 s met",
            "rolling update / batch floor: 3.37x (goal <= 1.5x): NOT met",
            '@verdict {"figure": "no-op pass", "value": "869 ms", "against": "-", '
            '"ratio": "", "goal": "< 1 s", "met": true}',
            "@verdict {not json",
            '@verdict {"figure": "only a figure"}',
        ]
    )
    assert run_all.rows_of(output) == [("no-op pass", "869 ms", "-", "", "< 1 s", "met")]


def test_the_words_of_a_verdict() -> None:
    assert [word(True), word(False), word(None)] == ["met", "NOT met", "-"]


def test_every_benchmark_run_all_runs_prints_verdicts() -> None:
    """A benchmark in run_all's list without a verdict line shows as FAILED in the table;
    this says so before anyone runs the whole list."""
    for bench in run_all.BENCHES:
        script = run_all.BENCH / f"bench_{bench.name}.py"
        assert "emit(" in script.read_text(), f"{script.name} prints no @verdict line"
