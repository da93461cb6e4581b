"""Loading benchmark: 2,000 Services in 200 files, gitorch vs the bare YAML parse.

    python3 bench/bench_load.py [--services 2000] [--files 200] [--rounds 5]

Prints, in one run (medians of --rounds):
  floor        the same bytes parsed with yaml.load_all(CSafeLoader) and nothing else
  parse        gitorch's YAML builder alone (libyaml events -> documents, no positions)
  load         gitorch: parse + schema + checks + typed model + digests, cold cache
  ratio        load / floor                      (goal: <= 3x)
  reload       after a commit that changes one file, same loader (cache by blob id)
  reload/load  (goal: < 10%)
and the same two from a real Git commit (snapshot read straight from the tree + load).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verdicts import emit  # noqa: E402

from gitorch.manifests import ManifestLoader  # noqa: E402
from gitorch.manifests.yamlload import parse  # noqa: E402
from gitorch.sources import LocalRepoSource, ManifestFile  # noqa: E402
from gitorch.sources._paths import git_blob_id  # noqa: E402

SERVICE = """\
---
apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: svc-{i}
  labels: {{team: team-{team}, tier: backend}}
spec:
  image: shop/svc-{i}:{version}
  replicas: {replicas}
  env: {{LOG_LEVEL: info, SERVICE_INDEX: "{i}"}}
  ports:
    - {{name: http, containerPort: 8080}}
  expose: {{port: {port}, targetPort: http}}
  resources:
    requests: {{cpu: 250m, memory: 64Mi}}
    limits: {{cpu: "1", memory: 128Mi}}
  readinessProbe:
    httpGet: {{path: /healthz, port: http}}
    periodSeconds: 2
  livenessProbe:
    tcpSocket: {{port: http}}
  dependsOn: [{dep}]
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
"""


def service_text(i: int, version: int = 1) -> str:
    dep = f"svc-{i - 1}" if i % 10 else ""
    return SERVICE.format(
        i=i, team=i % 17, version=version, replicas=1 + i % 3, port=10000 + i, dep=dep
    ).replace("  dependsOn: []\n", "")


def make_files(services: int, files: int) -> dict[str, bytes]:
    per_file = services // files
    out = {}
    for f in range(files):
        text = "".join(service_text(f * per_file + k) for k in range(per_file))
        out[f"apps/team-{f:03d}.yaml"] = text.encode()
    return out


def median_time(fn: Callable[[], object], rounds: int) -> float:
    return interleaved({"only": fn}, rounds)["only"]


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each function, run in turn each round so that all of them see
    the same machine load (a busy machine otherwise skews a ratio more than the code)."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    contents = make_files(args.services, args.files)
    files = [ManifestFile(path, git_blob_id(data), data) for path, data in sorted(contents.items())]
    changed_path = files[len(files) // 2].path
    changed_data = contents[changed_path].replace(b":1\n", b":2\n")
    changed = [
        ManifestFile(f.path, git_blob_id(changed_data), changed_data)
        if f.path == changed_path
        else f
        for f in files
    ]

    def floor() -> None:
        for f in files:
            list(yaml.load_all(f.data, Loader=yaml.CSafeLoader))

    def parse_only() -> None:
        for f in files:
            parse(f.data)

    def full_load() -> None:
        result = ManifestLoader().load(files, revision="bench")
        assert result.state is not None and len(result.state.services) == args.services, (
            result.diagnostics[:3]
        )

    warm = ManifestLoader()
    warm.load(files, revision="bench")

    def reload() -> None:
        # Alternate between the two versions so each round sees a one-file change.
        warm.load(changed, revision="bench-2")
        warm.load(files, revision="bench")

    timed = interleaved(
        {"floor": floor, "parse": parse_only, "load": full_load, "reload": reload}, args.rounds
    )
    floor_s, load_s, reload_s = timed["floor"], timed["load"], timed["reload"] / 2
    parse_s = timed["parse"]

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        git(repo, "init", "-q", "-b", "main")
        for path, data in contents.items():
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            (repo / path).write_bytes(data)
        git(repo, "add", "-A")
        git(repo, "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-qm", "v1")
        (repo / changed_path).write_bytes(changed_data)
        git(repo, "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-qam", "v2")
        source = LocalRepoSource(repo)

        def git_full() -> None:
            snap = source.snapshot("HEAD~1", "")
            assert ManifestLoader().load(snap.files, revision=snap.revision).ok

        git_loader = ManifestLoader()
        first = source.snapshot("HEAD~1", "")
        git_loader.load(first.files, revision=first.revision)

        def git_reload() -> None:
            for ref in ("HEAD", "HEAD~1"):
                snap = source.snapshot(ref, "")
                assert git_loader.load(snap.files, revision=snap.revision).ok

        git_full_s = median_time(git_full, args.rounds)
        git_reload_s = median_time(git_reload, args.rounds) / 2
        snapshot_s = median_time(lambda: source.snapshot("HEAD", ""), args.rounds)

    size = sum(len(d) for d in contents.values())
    print(f"synthetic repo: {args.services} Services in {args.files} files, {size / 1e6:.2f} MB")
    print(f"{'measure':44} {'seconds':>9} {'ratio':>8}")
    print(f"{'floor: yaml.load_all(CSafeLoader), bytes':44} {floor_s:9.3f} {'1.00x':>8}")
    print(f"{'gitorch YAML parse only (no positions)':44} {parse_s:9.3f} {parse_s / floor_s:7.2f}x")
    print(
        f"{'gitorch load + validate, bytes, cold':44} {load_s:9.3f} {load_s / floor_s:7.2f}x  (goal <= 3x floor)"
    )
    print(
        f"{'gitorch reload after a one-file change':44} {reload_s:9.3f} {reload_s / load_s:7.1%}  of load (goal < 10%)"
    )
    print(f"{'from git: snapshot (tree read) only':44} {snapshot_s:9.3f}")
    print(
        f"{'from git: snapshot + load, cold':44} {git_full_s:9.3f} {git_full_s / floor_s:7.2f}x  floor"
    )
    print(
        f"{'from git: snapshot + reload, one file new':44} {git_reload_s:9.3f} {git_reload_s / git_full_s:7.1%}  of cold"
    )
    floor = f"yaml CSafeLoader over the same bytes ({floor_s:.3f} s)"
    emit(
        f"load + validate, {args.services:,} services, cold",
        f"{load_s:.3f} s",
        against=floor,
        ratio=f"{load_s / floor_s:.2f}x",
        goal="<= 3x the floor",
        met=load_s / floor_s <= 3,
    )
    emit(
        "reload after a one-file change",
        f"{reload_s:.3f} s",
        against=f"the cold load ({load_s:.3f} s)",
        ratio=f"{reload_s / load_s:.1%}",
        goal="< 10% of the cold load",
        met=reload_s / load_s < 0.10,
    )


if __name__ == "__main__":
    main()
