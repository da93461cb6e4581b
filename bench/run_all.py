"""Every benchmark, one after the other, and one table of their figures.

    python3 bench/run_all.py --quick          # small sizes: a few minutes in all
    python3 bench/run_all.py                  # each benchmark's own defaults (an hour+)
    python3 bench/run_all.py --quick --only load,plan,cli_start

Each benchmark runs as its own process (the command is printed, its full output kept in
--out, default a temporary folder), with its floor or peer measured in that same run.
The table is made from the ``@verdict`` lines each prints (``bench/verdicts.py``): one
row per figure, with its floor or peer, the ratio, the goal and the benchmark's own
verdict (``-`` for a comparison without a goal). A benchmark that needs what this
machine lacks (the Docker engine, etcd, wrk, hey, haproxy, root for the rig of hosts)
is listed as skipped, with the reason; one that fails, or ends without a verdict line,
is listed with its exit code and the tail of its output: neither is a met goal.

Not run here: ``bench_pass.py`` (a profile of the steps of ``bench_daemon.py``'s no-op
pass on a rig that run kept, ``--keep DIR --leave-replicas``; the pass's goal is judged
by ``bench_daemon``) and ``soak.py`` (the chaos soak: a test of faults over minutes,
not a speed figure).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from verdicts import parse, word

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass(frozen=True)
class Bench:
    name: str
    peer: str  # the floor or peer the benchmark measures in the same run
    quick: tuple[str, ...]  # arguments for --quick
    needs: tuple[str, ...] = ()  # programs (or "docker", "root") it cannot run without


BENCHES = (
    Bench("load", "yaml CSafeLoader over the same bytes", ("--rounds", "3")),
    Bench("plan", "gitorch load + validate, cold", ("--rounds", "3")),
    Bench("cli_start", "python -c pass / the CSafeLoader parse process", ("--rounds", "3")),
    Bench(
        "daemon", "the goals of issue 20", ("--services", "500", "--idle", "20", "--commits", "2")
    ),
    Bench("runtime", "Popen + poll; docker run + poll", ("--count", "15", "--list-count", "200")),
    Bench("observe", "listdir + json + /proc", ("--count", "200", "--runs", "5")),
    Bench("scheduler", "kube-scheduler_perf thresholds", ("--rounds", "1", "--no-oracle")),
    Bench("store", "SQLite (etcd's peer)", ("--services", "300", "--passes", "3"), ("etcd",)),
    Bench("audit", "the log without its hash chain", ("--events", "500", "--rounds", "2")),
    Bench("http_parse", "the hand-written parser", ("--rounds", "2", "--count", "5000")),
    Bench("fast_path", "-", ("--requests", "5000", "--rounds", "3")),
    Bench("lb", "haproxy", ("--seconds", "2", "--rounds", "1"), ("wrk", "haproxy")),
    Bench("proxy_kill", "-", ("--rounds", "1"), ("hey",)),
    Bench(
        "rollout",
        "the batch floor and the replace floor beside the same client load",
        ("--rounds", "1", "--no-compose"),
        ("docker",),
    ),
    Bench("failover", "the lease TTL", ("--kills", "2"), ("etcd",)),
    Bench(
        "followers",
        "an etcd write + read; json.dumps of the table",
        ("--rounds", "10", "--routes", "2000"),
        ("etcd",),
    ),
    Bench(
        "multihost",
        "straight to a backend; the local proxy",
        ("--seconds", "2", "--rounds", "1"),
        ("docker", "root", "wrk", "haproxy"),
    ),
)


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


def rows_of(output: str) -> list[tuple[str, str, str, str, str, str]]:
    """(figure, value, floor or peer, ratio, goal, verdict) for each ``@verdict`` line."""
    return [(v.figure, v.value, v.against, v.ratio, v.goal, word(v.met)) for v in parse(output)]


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
    table: list[tuple[str, str, str, str, str, str, str]] = []
    load_before, started = os.getloadavg()[0], time.perf_counter()
    for bench in chosen:
        argv = [sys.executable, str(BENCH / f"bench_{bench.name}.py")]
        argv += list(bench.quick) if args.quick else []
        reason = missing(bench)
        if reason is not None:
            table.append((bench.name, "skipped", "", bench.peer, "", "", reason))
            continue
        print(f"$ {' '.join(argv[1:])}", flush=True)
        t0 = time.perf_counter()
        kept = out / f"{bench.name}.txt"
        # Into a file, not a pipe: the run ends when the benchmark's process does, even if
        # something it started outlives it holding its output (a pipe waits for them all).
        with kept.open("w") as sink:
            proc = subprocess.Popen(  # noqa: S603
                argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                code = proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = -1
        seconds = time.perf_counter() - t0
        output = kept.read_text(errors="replace")
        print(f"  {seconds:.0f} s, exit {code}", flush=True)
        rows = rows_of(output)
        table.extend((bench.name, *row) for row in rows)
        if code != 0 or not rows:
            tail = " | ".join(output.strip().splitlines()[-2:])[:160]
            why = f"exit {code}" if code != 0 else "no verdict line"
            table.append((bench.name, "FAILED", "", bench.peer, "", "", f"{why}: {tail}"))
    print(
        f"\n{len(chosen)} benchmarks in {time.perf_counter() - started:.0f} s"
        f"{' (--quick)' if args.quick else ''}; load average {load_before:.2f} -> "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; outputs in {out}"
    )
    print("| benchmark | figure | value | floor or peer | ratio | goal | met |")
    print("| --- | --- | ---: | --- | ---: | --- | --- |")
    for row in table:
        print("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    verdicts = [row[-1] for row in table]
    print(
        f"\n{verdicts.count('met')} met, {verdicts.count('NOT met')} NOT met, "
        f"{sum(row[1] == 'FAILED' for row in table)} failed, "
        f"{sum(row[1] == 'skipped' for row in table)} skipped"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
