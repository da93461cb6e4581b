"""Every benchmark, one after the other, and one table of their figures.

    python3 bench/run_all.py --quick          # small sizes: a few minutes in all
    python3 bench/run_all.py                  # each benchmark's own defaults (an hour+)
    python3 bench/run_all.py --quick --only load,plan,cli_start

Each benchmark runs as its own process (the command is printed, its full output kept in
--out, default a temporary folder), with its floor or peer measured in that same run.
The table is made from the lines each prints: a line that names a goal becomes a row
(figure, ratio, goal, met or not, as the benchmark judged it); a benchmark without goals
(a comparison with a peer only) contributes its comparison lines, goal "-". A benchmark
that needs what this machine lacks (the Docker engine, etcd, wrk, haproxy, root for the
rig of hosts) is listed as skipped, with the reason; one that fails is listed with its
exit code and the tail of its output: neither is a met goal.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass(frozen=True)
class Bench:
    name: str
    peer: str  # the floor or peer the benchmark measures in the same run
    quick: tuple[str, ...]  # arguments for --quick
    needs: tuple[str, ...] = ()  # programs (or "docker", "root") it cannot run without
    rows: str = r"goal"  # lines that become rows (regex, case-insensitive)
    goal: str = "-"  # the goal, for rows that do not name theirs


BENCHES = (
    Bench("load", "yaml CSafeLoader over the same bytes", ("--rounds", "3")),
    Bench("plan", "gitorch load + validate, cold", ("--rounds", "3")),
    Bench("cli_start", "python -c pass / the CSafeLoader parse process", ("--rounds", "3")),
    Bench(
        "daemon",
        "-",
        ("--services", "500", "--idle", "20", "--commits", "2"),
        rows=r"\b(met|NOT met)\s*$",
    ),
    Bench("runtime", "Popen + poll; docker run + poll", ("--count", "15", "--list-count", "200")),
    Bench("observe", "listdir + json + /proc", ("--count", "200", "--runs", "5")),
    Bench(
        "scheduler",
        "kube-scheduler_perf thresholds",
        ("--rounds", "1", "--no-oracle"),
        rows=r"x\s+(met|NOT met|MISSED)\s*$",
        goal="3x the reference",
    ),
    Bench(
        "store",
        "SQLite (etcd's peer)",
        ("--services", "300", "--passes", "3"),
        ("etcd",),
        rows=r"etcd / sqlite",
    ),  # fmt: skip
    Bench(
        "audit",
        "the log without its hash chain",
        ("--events", "500", "--rounds", "2"),
        rows=r"ratio|verify",
    ),  # fmt: skip
    Bench(
        "http_parse",
        "the hand-written parser",
        ("--rounds", "2", "--count", "5000"),
        rows=r"of the hand-written",
    ),  # fmt: skip
    Bench(
        "lb",
        "haproxy",
        ("--seconds", "2", "--rounds", "1"),
        ("wrk", "haproxy"),
        rows=r"^\s+proxy x\d.*: throughput",
        goal=">= 50% of haproxy; < 2 ms added at p99 at 50% load",
    ),
    Bench(
        "rollout",
        "10 x docker run + poll, all at once; docker-compose",
        ("--rounds", "1", "--no-compose"),
        ("docker",),
        rows=r"goal|/ floor|floor",
    ),
    Bench("failover", "the lease TTL", ("--kills", "2"), ("etcd",), rows=r"leader kills"),
    Bench(
        "multihost",
        "straight to a backend; the local proxy",
        ("--seconds", "2", "--rounds", "1"),
        ("docker", "root", "wrk", "haproxy"),
        rows=r"x local proxy",
    ),  # fmt: skip
)

MET = re.compile(r"\bNOT met\b|OVER GOAL|not met", re.IGNORECASE)
RATIO = re.compile(r"(\d+(?:\.\d+)?x|\d+(?:\.\d+)?%)")
GOAL = re.compile(r"goal[^)]*", re.IGNORECASE)
JUDGED = re.compile(r"\b(met|NOT met|MISSED)\s*$")


def missing(bench: Bench) -> str | None:
    for need in bench.needs:
        if need == "root":
            if os.geteuid() != 0:
                return "needs root"
        elif need == "docker":
            if not Path("/var/run/docker.sock").exists():
                return "needs the Docker engine"
        elif shutil.which(need) is None:
            return f"needs {need}"
    return None


def rows_of(bench: Bench, output: str) -> list[tuple[str, str, str, str]]:
    """(figure, ratio, goal, verdict) for each line of ``output`` that is a row."""
    found = []
    pattern = re.compile(bench.rows, re.IGNORECASE)
    for line in output.splitlines():
        if not pattern.search(line):
            continue
        text = " ".join(line.split())
        goal = GOAL.search(text)
        # The measured ratio: the last one before the goal (the goal's own comes after).
        ratio = RATIO.findall(text[: goal.start()] if goal else text)
        judged = JUDGED.search(text)  # a table row that ends with its verdict
        if goal is None and MET.search(text):
            verdict = "NOT met"  # a line of verdicts (bench_lb's), one of them not met
        elif judged is not None:
            verdict = "NOT met" if judged.group(1) == "MISSED" else judged.group(1)
        else:
            verdict = "-" if goal is None else "NOT met" if MET.search(text) else "met"
        named = goal.group(0) if goal else bench.goal
        found.append((text, ratio[-1] if ratio else "", named, verdict))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: minutes, not hours")
    parser.add_argument("--only", default="", help="comma-separated names (load,plan,...)")
    parser.add_argument("--out", type=Path, help="keep each benchmark's output here")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per benchmark")
    args = parser.parse_args()
    chosen = [b for b in BENCHES if not args.only or b.name in args.only.split(",")]
    out = args.out or Path(tempfile.mkdtemp(prefix="gitorch-bench-all-"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    table: list[tuple[str, str, str, str, str, str]] = []
    load_before, started = os.getloadavg()[0], time.perf_counter()
    for bench in chosen:
        argv = [sys.executable, str(BENCH / f"bench_{bench.name}.py")]
        argv += list(bench.quick) if args.quick else []
        reason = missing(bench)
        if reason is not None:
            table.append((bench.name, "skipped", bench.peer, "", "", reason))
            continue
        print(f"$ {' '.join(argv[1:])}", flush=True)
        t0 = time.perf_counter()
        try:
            done = subprocess.run(  # noqa: S603
                argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout
            )
            output, code = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as exc:
            output = f"{exc.stdout or ''}{exc.stderr or ''}"
            output, code = output if isinstance(output, str) else "", -1
        seconds = time.perf_counter() - t0
        (out / f"{bench.name}.txt").write_text(output)
        print(f"  {seconds:.0f} s, exit {code}", flush=True)
        rows = rows_of(bench, output)
        if code != 0:
            tail = " | ".join(output.strip().splitlines()[-2:])[:160]
            table.append((bench.name, "FAILED", bench.peer, "", "", f"exit {code}: {tail}"))
        for figure, ratio, goal, verdict in rows:
            table.append((bench.name, figure, bench.peer, ratio, goal, verdict))
        if code == 0 and not rows:
            table.append((bench.name, "(no figure recognised)", bench.peer, "", "", "see output"))
    print(
        f"\n{len(chosen)} benchmarks in {time.perf_counter() - started:.0f} s"
        f"{' (--quick)' if args.quick else ''}; load average {load_before:.2f} -> "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; outputs in {out}"
    )
    print("| benchmark | figure | floor or peer | ratio | goal | met |")
    print("| --- | --- | --- | ---: | --- | --- |")
    for name, figure, peer, ratio, goal, verdict in table:
        print(f"| {name} | {figure} | {peer} | {ratio} | {goal} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
