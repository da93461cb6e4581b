"""What the audit log's hash chain costs: appends per second with it, against the same
store without it (the schema before the chain's migration) in the same run, and how
long ``gitorch audit --verify`` takes over the log.

    python3 bench/bench_audit.py            # options: --events 3000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verdicts import emit  # noqa: E402

from gitorch.state import StateStore  # noqa: E402
from gitorch.state.audit_chain import verify  # noqa: E402
from gitorch.state.schema import MIGRATIONS  # noqa: E402

#: The schema just before the audit chain's migration (the peer).
UNCHAINED = len(MIGRATIONS) - 1


def appends_per_second(store: StateStore, events: int) -> float:
    started = time.perf_counter()
    for i in range(events):
        store.append_event(
            "rollout.started", f"web: rolling out step {i}", service="web", data={"step": i}
        )
    return events / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    chained: list[float] = []
    plain: list[float] = []
    verifies: list[float] = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            # Interleaved, round by round, so the machine's load hits both.
            with StateStore(Path(tmp) / "plain", migrations=MIGRATIONS[:UNCHAINED]) as store:
                plain.append(appends_per_second(store, args.events))
            with StateStore(Path(tmp) / "chained") as store:
                chained.append(appends_per_second(store, args.events))
                started = time.perf_counter()
                entries, highest = store.audit_chain()
                assert verify(entries, highest_id=highest).intact
                verifies.append(time.perf_counter() - started)
    base, mine = statistics.median(plain), statistics.median(chained)
    print(f"events per round: {args.events}, rounds: {args.rounds} (medians)")
    print(f"appends/s without the chain (schema {UNCHAINED}): {base:,.0f}")
    print(f"appends/s with the chain:                   {mine:,.0f}  ratio {mine / base:.2f}x")
    print(
        f"verify {args.events} entries: {statistics.median(verifies) * 1000:.0f} ms "
        f"({statistics.median(verifies) / args.events * 1e6:.1f} us per entry)"
    )
    emit(
        "audit appends with the hash chain",
        f"{mine:,.0f}/s",
        against=f"the log without its chain ({base:,.0f}/s)",
        ratio=f"{mine / base:.2f}x",
    )
    emit(f"verify {args.events} chained entries", f"{statistics.median(verifies) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
