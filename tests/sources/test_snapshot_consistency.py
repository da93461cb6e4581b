"""A commit made while a snapshot is being read never yields a mix of two commits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sources_helpers import Checkout, Remote

from gitorch.sources import GitSource, LocalRepoSource, Snapshot

FILES = [f"svc/app-{i}.yaml" for i in range(12)]


def _write_generation(checkout: Checkout, n: int) -> str:
    for name in FILES:
        checkout.write(name, f"generation: {n}\nfile: {name}\n" + "pad: x\n" * 50)
    return checkout.commit(f"generation {n}")


def _generation_of(snapshot: Snapshot) -> int:
    """The single generation all files carry; fails the test on a mix."""
    markers = {f.data.split(b"\n", 1)[0] for f in snapshot.files}
    assert len(markers) == 1, f"mixed snapshot {snapshot.revision}: {sorted(markers)}"
    assert len(snapshot.files) == len(FILES)
    generation = int(markers.pop().split(b": ")[1])
    # The files belong to the very commit the snapshot names.
    assert snapshot.commit is not None
    assert snapshot.commit.message == f"generation {generation}"
    return generation


def _committer(checkout: Checkout, stop: threading.Event, made: list[int], push: bool) -> None:
    n = 1
    while not stop.is_set():
        n += 1
        _write_generation(checkout, n)
        if push:
            checkout.push("main")
        made.append(n)


def test_local_snapshots_are_never_mixed_while_commits_land(
    checkout: Checkout, closing: list[object]
) -> None:
    _write_generation(checkout, 1)
    source = LocalRepoSource(checkout.path)
    closing.append(source)
    stop, made = threading.Event(), [1]
    worker = threading.Thread(target=_committer, args=(checkout, stop, made, False))
    worker.start()
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline or len(seen) < 3:
            seen.add(_generation_of(source.snapshot(path="svc")))
            if time.monotonic() > deadline + 10:
                break
    finally:
        stop.set()
        worker.join()
    # The reads really overlapped with several commits.
    assert len(seen) >= 3, f"only saw generations {sorted(seen)} of {made[-1]}"


def test_cached_snapshots_are_never_mixed_while_pushes_and_fetches_land(
    remote: Remote, cache_dir: Path, closing: list[object]
) -> None:
    _write_generation(remote.work, 1)
    remote.work.push("main")
    source = GitSource(remote.url, cache_dir)
    closing.append(source)
    source.fetch()
    stop, made = threading.Event(), [1]
    worker = threading.Thread(target=_committer, args=(remote.work, stop, made, True))
    worker.start()
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline or len(seen) < 3:
            assert source.fetch().reachable
            seen.add(_generation_of(source.snapshot(path="svc")))
            if time.monotonic() > deadline + 10:
                break
    finally:
        stop.set()
        worker.join()
    assert len(seen) >= 3, f"only saw generations {sorted(seen)} of {made[-1]}"
