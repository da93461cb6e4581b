"""One machine-readable line per figure a benchmark reports, for ``run_all.py``'s table.

Each benchmark prints its own human table; beside it, for every figure that has a floor,
a peer or a goal, it calls :func:`emit`, which prints one line::

    @verdict {"figure": "...", "value": "...", "against": "...", "ratio": "...", "goal": "...", "met": true}

``run_all.py`` builds its table from those lines alone (:func:`parse`), so a change to a
benchmark's human output cannot turn a row into a wrong verdict, and a header or a
fragment of a table is never read as a figure. ``met`` is ``None`` for a comparison with
no goal.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

MARK = "@verdict "


@dataclass(frozen=True)
class Verdict:
    """One figure: what was measured, its value, what it is compared with, and the verdict."""

    figure: str  # what was measured: "gitorch validate, 2,000 services (CPU)"
    value: str  # with its unit: "1,074 ms"
    against: str  # the floor or peer, with its own value where it has one
    ratio: str  # "1.90x", "2.7%", or "" when the goal is absolute
    goal: str  # "<= 2x the floor", "< 150 ms", or "-" for a comparison
    met: bool | None  # None: no goal, a comparison only


def emit(
    figure: str,
    value: str,
    *,
    against: str = "-",
    ratio: str = "",
    goal: str = "-",
    met: bool | None = None,
) -> None:
    """Print the figure's ``@verdict`` line (flushed: run_all keeps what a killed run printed)."""
    line = json.dumps(asdict(Verdict(figure, value, against, ratio, goal, met)))
    print(MARK + line, flush=True)


def parse(output: str) -> list[Verdict]:
    """The verdicts a benchmark printed, in order; lines that do not parse are skipped."""
    found = []
    for line in output.splitlines():
        if not line.startswith(MARK):
            continue
        try:
            found.append(Verdict(**json.loads(line[len(MARK) :])))
        except (ValueError, TypeError):
            continue
    return found


def word(met: bool | None) -> str:
    """The table's word for a verdict."""
    return "-" if met is None else "met" if met else "NOT met"
