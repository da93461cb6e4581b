"""Command start-up: whole `gitorch` processes against the bare interpreter.

    python3 bench/bench_cli_start.py [--rounds 5] [--services 2000] [--before DIR]

Every figure is one whole process (fork, interpreter, imports, work, exit), timed from
outside, the median of --rounds; all commands run in turn each round, so machine load
hits floor and gitorch alike. The interpreter is this one (sys.executable), never a
version-manager shim (a pyenv shim alone adds ~100 ms to every start).

  floor pass     python -c pass
  floor yaml     python -c "import yaml"
  --help         python -m gitorch --help                        (goal: < 150 ms)
  validate       gitorch validate --path examples/repo
  plan           gitorch plan --path examples/repo --runtime process (fresh state)
and, on the synthetic repo of bench_load.py (--services in 200 files, one Git commit):
  parse N        a process that parses the same files with yaml's CSafeLoader, nothing else
  validate N     gitorch validate                  (issue 20's goal: <= 2x parse N)
  plan N         gitorch plan --runtime process --format json
                                                   (issue 20's goal: <= 1.5x validate N)
  plan N text    the same plan as text (the default output), against the same goal
Each process's CPU time (user + system, from the kernel's accounting of the child) is
printed beside its wall time: on this shared machine the wall time swings with the load,
the CPU time much less.

Then `gitorch validate --watch` on the synthetic repo: --watch-commits commits that each
change one file (one Service's image), timed from the end of `git commit` to the verdict
naming the new commit (issue 20's goal: < 10% of `validate N` as a whole process).

--before DIR times another checkout of gitorch (e.g. an older commit from `git archive`) in
the same rounds, so a before/after comparison sees the same machine load; --tree swaps the
checkout timed as "after" (default: this one).
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_load import make_files, service_text
from verdicts import emit

ROOT = Path(__file__).resolve().parents[1]

PARSE = (
    "import pathlib, sys, yaml\n"
    "for p in sorted(pathlib.Path(sys.argv[1]).rglob('*.yaml')):\n"
    "    list(yaml.load_all(p.read_bytes(), Loader=yaml.CSafeLoader))\n"
)


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)  # noqa: S607


def synthetic_repo(where: Path, services: int) -> Path:
    """bench_load.py's repo (``services`` Services in 200 files) as one Git commit."""
    repo = where / "repo"
    for path, data in make_files(services, 200).items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(data)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-qm", "bench")
    return repo


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(argv: list[str], cwd: Path, env: dict[str, str], expect: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one whole process."""
    cpu_before = children_cpu()
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)  # noqa: S603
    elapsed = time.perf_counter() - start
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return elapsed, children_cpu() - cpu_before


def head_of(repo: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)  # noqa: S607
    return done.stdout.strip()


def watch_revalidations(
    repo: Path, argv: list[str], cwd: Path, env: dict[str, str], commits: int, per_file: int
) -> list[float]:
    """Seconds from the end of each one-file commit to `validate --watch`'s verdict on it."""
    proc = subprocess.Popen(  # noqa: S603
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    out = proc.stdout.fileno()
    pending = ""

    def verdict_on(revision: str, timeout: float = 60.0) -> float:
        nonlocal pending
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            while "\n" in pending:
                line, pending = pending.split("\n", 1)
                if "valid:" in line and revision[:12] in line:
                    return time.perf_counter()
            if select.select([out], [], [], 0.5)[0]:
                pending += os.read(out, 65536).decode("utf-8", "replace")
        raise SystemExit(f"validate --watch gave no verdict on {revision[:12]} in {timeout} s")

    head = head_of(repo)
    samples: list[float] = []
    try:
        verdict_on(head)  # the first, full validation
        target = repo / "apps" / "team-000.yaml"  # make_files: svc-0 .. svc-{per_file - 1}
        original = target.read_bytes()
        for n in range(commits):
            # One file changes: its first Service gets a new image tag.
            target.write_bytes(
                service_text(0, version=100 + n).encode()
                + "".join(service_text(k) for k in range(1, per_file)).encode()
            )
            time.sleep(0.5)  # the edit's own verdict (HEAD unchanged) passes first
            git(repo, "commit", "-qam", f"one file {n}")
            done = time.perf_counter()
            head = head_of(repo)
            samples.append(verdict_on(head) - done)
        target.write_bytes(original)
        git(repo, "commit", "-qam", "restore")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--services", type=int, default=2000, help="synthetic repo size (0: skip that part)"
    )
    parser.add_argument("--watch-commits", type=int, default=5, help="0: skip --watch")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the gitorch checkout to time")
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        metavar="DIR",
        help="another checkout, timed in the same rounds (rows marked 'before')",
    )
    args = parser.parse_args()
    py = sys.executable
    trees = {"": args.tree.resolve()}
    if args.before is not None:
        trees["before "] = args.before.resolve()
    big = f"{args.services:,}"

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # PYTHONDONTWRITEBYTECODE (set in some shells and CI) would make every process
        # compile each module it imports from source, as no installed package does: the
        # warm-up round writes the .pyc files, as an install would have.
        dropped = ("GITORCH_DEBUG", "FORCE_COLOR", "PYTHONDONTWRITEBYTECODE")
        base_env = {k: v for k, v in os.environ.items() if k not in dropped}
        base_env.update({"NO_COLOR": "1", "GITORCH_STATE": str(work / "st")})
        # The processes run in an empty folder so that only PYTHONPATH provides gitorch; the
        # small commands read the examples as committed in this checkout.
        cwd = work / "cwd"
        cwd.mkdir()
        example = ["--repo", str(ROOT), "--path", "examples/repo"]
        # name -> (argv, expected exit code, environment); plan exits 2: all is a change.
        commands: dict[str, tuple[list[str], int, dict[str, str]]] = {
            "floor pass": ([py, "-c", "pass"], 0, base_env),
            "floor yaml": ([py, "-c", "import yaml"], 0, base_env),
        }
        where: list[str] = []
        if args.services:
            repo = synthetic_repo(work, args.services)
            where = ["--repo", str(repo), "--path", "apps"]
            commands[f"parse {big}"] = ([py, "-c", PARSE, str(repo / "apps")], 0, base_env)
        # Each gitorch command of every tree in turn (after, before, after, ...).
        kinds: dict[str, tuple[list[str], int]] = {
            "--help": (["--help"], 0),
            "validate": (["validate", *example], 0),
            "plan": (["plan", *example, "--runtime", "process"], 2),
        }
        if args.services:
            kinds[f"validate {big}"] = (["validate", *where], 0)
            kinds[f"plan {big}"] = (["plan", *where, "--runtime", "process", "--format", "json"], 2)
            kinds[f"plan {big} text"] = (["plan", *where, "--runtime", "process"], 2)
        for kind, (words, expect) in kinds.items():
            for mark, tree in trees.items():
                env = {**base_env, "PYTHONPATH": str(tree)}
                commands[f"{mark}{kind}"] = ([py, "-m", "gitorch", *words], expect, env)

        load_before = os.getloadavg()[0]
        for argv, expect, env in commands.values():  # warm-up: page cache, .pyc files
            run_once(argv, cwd, env, expect)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, (argv, expect, env) in commands.items():
                wall, used = run_once(argv, cwd, env, expect)
                samples[name].append(wall)
                cpu[name].append(used)
        watch: list[float] = []
        if args.services and args.watch_commits:
            env = {**base_env, "PYTHONPATH": str(args.tree.resolve())}
            argv = [py, "-m", "gitorch", "validate", *where, "--watch"]
            watch = watch_revalidations(
                repo, argv, cwd, env, args.watch_commits, args.services // 200
            )
        load_after = os.getloadavg()[0]

    med = {name: statistics.median(values) for name, values in samples.items()}
    med_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    print(
        f"{', '.join(f'{m or chr(32)}{t}'.strip() for m, t in trees.items())}: "
        f"{args.rounds} rounds, median wall per whole process; "
        f"load average {load_before:.2f} -> {load_after:.2f} on {os.cpu_count()} cores"
    )
    print(
        f"{'command':<23} {'median':>9} {'min':>9} {'max':>9} {'CPU':>9}  {'/pass':>6} "
        f"{'/yaml':>6}  vs (wall; CPU)"
    )
    for name, values in samples.items():
        versus = ""
        mark = "before " if name.startswith("before ") else ""
        if name == f"{mark}validate {big}":
            versus = ratio_text(med, med_cpu, name, f"parse {big}", 2.0)
        elif name in (f"{mark}plan {big}", f"{mark}plan {big} text"):
            versus = ratio_text(med, med_cpu, name, f"{mark}validate {big}", 1.5)
        elif name == f"{mark}--help":
            versus = "goal < 150 ms: " + ("met" if med[name] < 0.150 else "NOT met")
            if not mark:
                emit(
                    "gitorch --help, whole process",
                    f"{med[name] * 1000:.0f} ms (CPU {med_cpu[name] * 1000:.0f} ms)",
                    against=f"python -c pass ({med['floor pass'] * 1000:.0f} ms)",
                    goal="< 150 ms",
                    met=med[name] < 0.150,
                )
        print(
            f"{name:<23} {med[name] * 1000:>7.1f}ms {min(values) * 1000:>7.1f}ms "
            f"{max(values) * 1000:>7.1f}ms {med_cpu[name] * 1000:>7.1f}ms  "
            f"{med[name] / med['floor pass']:>5.2f}x "
            f"{med[name] / med['floor yaml']:>5.2f}x  {versus}"
        )
    if watch:
        full = med[f"validate {big}"]
        ratio = statistics.median(watch) / full
        print(
            f"validate --watch, one-file commit to verdict: median "
            f"{statistics.median(watch) * 1000:.1f} ms of {len(watch)} "
            f"({', '.join(f'{w * 1000:.0f}' for w in watch)} ms) = {ratio:.1%} of validate "
            f"{big} (goal < 10%: {'met' if ratio < 0.10 else 'NOT met'})"
        )
        emit(
            "validate --watch, a one-file commit to its verdict",
            f"{statistics.median(watch) * 1000:.0f} ms (median of {len(watch)})",
            against=f"validate {big}, whole process ({full * 1000:.0f} ms)",
            ratio=f"{ratio:.1%}",
            goal="< 10%",
            met=ratio < 0.10,
        )


def ratio_text(
    wall: dict[str, float], cpu: dict[str, float], name: str, floor: str, goal: float
) -> str:
    # Met only when both are: on a shared machine the wall ratio alone swings with the load.
    ratio, cpu_ratio = wall[name] / wall[floor], cpu[name] / cpu[floor]
    met = ratio <= goal and cpu_ratio <= goal
    if not name.startswith("before "):
        emit(
            f"{name}, whole process",
            f"{wall[name] * 1000:,.0f} ms (CPU {cpu[name] * 1000:,.0f} ms)",
            against=f"{floor} ({wall[floor] * 1000:,.0f} ms, CPU {cpu[floor] * 1000:,.0f} ms)",
            ratio=f"{ratio:.2f}x (CPU {cpu_ratio:.2f}x)",
            goal=f"<= {goal}x, wall and CPU",
            met=met,
        )
    return (
        f"{ratio:.2f}x; {cpu_ratio:.2f}x {floor} "
        f"(goal <= {goal}x, wall and CPU: {'met' if met else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
