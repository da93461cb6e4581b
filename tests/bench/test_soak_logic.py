"""The chaos soak's own logic (bench/soak*.py), without a cluster: its plan is decided by
the seed alone, its model of the shop agrees with gitorch's loader, its trace check can
fail, and its excuse rules excuse only what they say."""

from __future__ import annotations

import http.client
import random
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from soak_checks import Checks
from soak_commits import Committer
from soak_faults import Injected
from soak_load import Failure, Load, Targets
from soak_plan import DOCKER_ONLY, ETCD_ONLY, fault_kinds, make_plan
from soak_rig import GitRemote, Journal, World
from soak_shop import COMMIT_KINDS, Ports, initial_shop, next_change, render

from gitorch.runtime.base import LABEL_REVISION, LABEL_SERVICE, LABEL_SPEC_DIGEST


def test_the_plan_is_the_seeds() -> None:
    kinds = fault_kinds("process")
    assert make_plan(7, 600, kinds) == make_plan(7, 600, kinds)
    assert make_plan(7, 600, kinds) != make_plan(8, 600, kinds)
    # Leaving a fault kind out changes no commit.
    fewer = fault_kinds("process", exclude=("disk-full",))
    commits = [p for p in make_plan(7, 600, kinds) if p.what == "commit"]
    assert commits == [p for p in make_plan(7, 600, fewer) if p.what == "commit"]


def test_a_short_soak_injects_every_fault_kind_and_commits_every_kind() -> None:
    kinds = fault_kinds("process")
    assert not set(DOCKER_ONLY) & set(kinds)
    assert set(DOCKER_ONLY) <= set(fault_kinds("docker"))
    for seed in range(1, 20):
        plan = make_plan(seed, 150, kinds)
        faults = [p for p in plan if p.what == "fault"]
        assert {p.kind for p in faults} == set(kinds), seed
    seen = {p.kind for seed in range(1, 6) for p in make_plan(seed, 1800, kinds)}
    assert set(COMMIT_KINDS) <= seen


def test_docker_and_etcd_runs_add_their_faults_and_the_shop_runs_images() -> None:
    assert not set(ETCD_ONLY) & set(fault_kinds("docker"))
    every = fault_kinds("docker", etcd=True)
    assert set(DOCKER_ONLY) | set(ETCD_ONLY) <= set(every)
    plan = make_plan(5, 300, every)
    assert {p.kind for p in plan if p.what == "fault"} == set(every)
    shop = initial_shop(_ports(), 3, images=True)
    for svc in shop.services:
        spec = render(svc, shop)["spec"]
        assert "command" not in spec and spec["image"] == f"gitorch-example/{svc.app}:1"
        assert spec["readinessProbe"]["httpGet"]["path"] == "/cgi-bin/healthz"
    process = initial_shop(_ports(), 3)
    assert "image" not in render(process.services[0], process)["spec"]


def _ports() -> Ports:
    return Ports(
        api=18001,
        web=18000,
        extras={f"extra{n}": 18010 + n for n in range(1, 5)},
        counter=True,
    )


def test_commits_are_the_seeds_and_the_model_agrees_with_gitorch(tmp_path: Path) -> None:
    """A 30-minute plan's commits made twice in real Git repos: the same trees, and each
    one valid or invalid exactly as the model says (Committer loads every commit with
    gitorch's loader and raises when they disagree)."""
    plan = [p for p in make_plan(3, 1800, ()) if p.what == "commit"]
    trees = []
    for run in ("a", "b"):
        committer = _committer(tmp_path / run)
        committer.make(_initial())
        for planned in plan:
            committer.planned(planned)
        trees.append([(c.kind, c.shop) for c in committer.history])
        kinds = {c.kind for c in committer.history}
        assert {"invalid", "revert", "errors-canary", "never-ready", "scale"} <= kinds
    assert trees[0] == trees[1]


def _initial() -> object:
    from soak_shop import Change

    return Change("initial", "the shop", initial_shop(_ports(), 3), {})


def _committer(root: Path) -> Committer:
    root.mkdir()
    world = World(root)
    world.logs.mkdir()
    remote = GitRemote(world)
    remote.init()
    journal = Journal(world.logs / "journal.jsonl")
    return Committer(remote, journal, Targets(lambda: -1), _ports(), lambda: None)


def test_the_trace_check_fails_what_does_not_trace(tmp_path: Path) -> None:
    committer = _committer(tmp_path / "repo")
    first = committer.make(_initial())
    bump = next_change("good-version", (0.0, 0.0, 0.0), committer.shops(), _ports())
    second = committer.make(bump)
    name = bump.service
    assert name is not None
    old, new = first.digests[name], second.digests[name]
    assert old != new
    version = {s.name: s.version_label for s in second.shop.services}[name]

    def labels(revision: str, digest: str) -> dict[str, str]:
        return {LABEL_SERVICE: name, LABEL_REVISION: revision, LABEL_SPEC_DIGEST: digest}

    env = {"VERSION": version}
    assert committer.trace(name, labels(second.sha, new), env) is None
    # An older template under a newer revision traces (a rollback labels it so) ...
    old_env = {"VERSION": {s.name: s.version_label for s in first.shop.services}[name]}
    assert committer.trace(name, labels(second.sha, old), old_env) is None
    # ... a newer template under an older revision does not, nor an unknown commit, nor
    # a replica whose environment is not its template's.
    assert "no template" in str(committer.trace(name, labels(first.sha, new), env))
    assert "no commit" in str(committer.trace(name, labels("f" * 40, new), env))
    assert "VERSION" in str(committer.trace(name, labels(second.sha, new), {"VERSION": "x"}))
    invalid = committer.make(next_change("invalid", (0.0, 0.0, 0.0), committer.shops(), _ports()))
    assert "invalid" in str(committer.trace(name, labels(invalid.sha, new), env))


def test_the_surge_bound_follows_the_specs_in_force(tmp_path: Path) -> None:
    committer = _committer(tmp_path / "repo")
    first = committer.make(_initial())
    assert committer.surge_bound("api", first.at) == 4  # 2 + maxSurge 1 + 1 terminating
    assert committer.surge_bound("web", first.at) == 6  # Canary: stable set + canary set
    assert committer.surge_bound("worker", first.at) == 1  # Recreate
    assert committer.surge_bound("extra1", first.at) is None


def _checks(bad: set[str], faults: list[Injected]) -> SimpleNamespace:
    return SimpleNamespace(bad_versions=lambda: bad, faults=SimpleNamespace(done=faults))


def _failure(**kw: object) -> Failure:
    base: dict[str, object] = dict(
        service="api", client="post", start=100.0, end=100.05, error="HTTP 502", status=502
    )
    base.update(kw)
    return Failure(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("failure", "fault", "excuse"),
    [
        # a 5xx from a version made to fail is the canary's; from a good one it is not
        (_failure(status=500, version="3-errors"), None, "bad-canary"),
        (_failure(status=500, version="3"), None, None),
        # a replica killed under a POST in flight
        (
            _failure(),
            Injected("replica-kill", 100.02, 100.02, "api", others_ready=1),
            "replica-kill",
        ),
        (
            _failure(client="keepalive"),
            Injected("replica-kill", 100.02, 100.02, "api", others_ready=1),
            None,
        ),
        (_failure(), Injected("replica-kill", 100.02, 100.02, "web", others_ready=1), None),
        # sent after the SIGKILL, while the kernel was still tearing the replica down
        # (seed 11: 0.19 s after it on a machine loaded to 16), then after it had ended
        (
            _failure(start=100.2, end=100.3),
            Injected("replica-kill", 100.0, 100.4, "api", others_ready=2, gone=100.4),
            "replica-kill",
        ),
        (
            _failure(start=100.6, end=100.7),
            Injected("replica-kill", 100.0, 100.4, "api", others_ready=2, gone=100.4),
            None,
        ),
        (
            _failure(start=103.0, end=103.1),
            Injected("replica-kill", 100.02, 100.02, "api", others_ready=1),
            None,
        ),
        # the only ready replica killed: 503s until a replacement serves
        (
            _failure(status=503, error="HTTP 503", start=110, end=110.1),
            Injected("replica-kill", 100, 100, "api", others_ready=0),
            "sole-replica",
        ),
        (
            _failure(status=503, error="HTTP 503", start=160, end=160.1),
            Injected("replica-kill", 100, 100, "api", others_ready=0),
            None,
        ),
        # the proxy killed: what was in flight on that moment; never a connection refused
        # while a new coordinator starts (the keeper holds the sockets: they queue)
        (
            _failure(status=None, error="reset", end=100.3),
            Injected("proxy-kill", 100, 102, back=102, gone=100.2),
            "proxy-kill",
        ),
        (  # its answer cut short inside the body (soak seed 1208: IncompleteRead)
            _failure(status=None, error="cut short", start=100.1, end=100.15),
            Injected("proxy-kill", 100.12, 102, back=102, gone=100.12),
            "proxy-kill",
        ),
        (
            _failure(status=None, error="cut short", start=104, end=104.05),
            Injected("proxy-kill", 100, 102, back=102, gone=100.2),
            None,
        ),
        (
            _failure(status=None, error="refused", start=100.5, end=100.5),
            Injected("proxy-kill", 100, 102, back=102, gone=100.2),
            None,
        ),
        (
            _failure(status=None, error="refused", start=110, end=110),
            Injected("proxy-kill", 100, 102, back=102, gone=100.2),
            None,
        ),
        (
            _failure(status=502, end=100.3),
            Injected("proxy-kill", 100, 102, back=102, gone=100.2),
            None,
        ),
        # a proxy worker killed: what was in flight on that moment
        (
            _failure(status=None, error="reset"),
            Injected("proxy-worker-kill", 100.02, 100.02),
            "proxy-worker-kill",
        ),
        (
            _failure(status=None, error="reset", start=101, end=101.1),
            Injected("proxy-worker-kill", 100.02, 100.02),
            None,
        ),
        # the Docker engine restarted: its published ports were down until a while after
        (
            _failure(status=None, error="refused", start=103, end=103),
            Injected("docker-restart", 100, 102),
            "docker-restart",
        ),
        (
            _failure(status=502, start=108, end=108),
            Injected("docker-restart", 100, 102),
            "docker-restart",
        ),
        (_failure(status=500, start=101, end=101), Injected("docker-restart", 100, 102), None),
        (
            _failure(status=None, error="refused", start=130, end=130),
            Injected("docker-restart", 100, 102),
            None,
        ),
        # the daemon stopped: nothing excused
        (_failure(status=None, error="refused"), Injected("daemon-stop", 99, 105), None),
    ],
)
def test_the_excuses_excuse_only_what_they_say(
    failure: Failure, fault: Injected | None, excuse: str | None
) -> None:
    checks = _checks({"3-errors"}, [fault] if fault else [])
    assert Checks.excuse(checks, failure) == excuse  # type: ignore[arg-type]


def test_the_load_tells_failures_by_name() -> None:
    from soak_load import _name

    assert _name(ConnectionRefusedError()) == "refused"
    assert _name(ConnectionResetError()) == "reset"
    assert _name(TimeoutError()) == "timeout"
    assert _name(http.client.IncompleteRead(b"x" * 45, 12)) == "cut short"
    assert random.Random("x").random() == random.Random("x").random()


def _canary_checks(tmp_path: Path, ends: list[float], introduced: list[float]) -> Checks:
    """Checks over a load that saw a bad version answer 5xx at ``ends`` (monotonic),
    beside 4 good answers for each bad one, the version made at ``introduced``."""
    load = Load(Targets(lambda: 0), 1.0, {})
    load.started = 0.0
    for end in ends:
        load.tally.failures.append(
            _failure(service="web", status=500, version="5-errors", start=end - 0.05, end=end)
        )
        bucket = load.tally.versions[("web", load.bucket_of(end))]
        bucket["5-errors"] += 1
        bucket["4"] += 4
    return Checks(
        Journal(tmp_path / "journal.jsonl"),
        load,
        SimpleNamespace(done=[]),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        lambda: None,
        surge_bound=lambda s, t: None,
        trace=lambda s, labels, env: None,
        labels_of=dict,
        bad_versions=lambda: {"5-errors"},
        introduced=lambda service, version: introduced,
    )


def test_a_bad_version_made_again_is_a_new_canary(tmp_path: Path) -> None:
    """A revert that makes a failed canary's version again starts a new canary: the two
    episodes are judged apart (seed 7 once reported them as one 79 s window)."""
    twice = [*range(160, 170), *range(230, 240)]
    checks = _canary_checks(tmp_path, [float(t) for t in twice], [155.0, 215.0])
    report = checks.canary_checks()
    assert set(report) == {"web@5-errors#1", "web@5-errors#2"}
    assert checks.breaks == []
    # One episode that lasts too long is still a break.
    long = _canary_checks(tmp_path, [float(t) for t in range(160, 260, 5)], [155.0])
    long.canary_checks()
    assert [b.invariant for b in long.breaks] == ["canary"]


@pytest.mark.parametrize(("served", "judged"), [(False, 0), (True, 1)])
def test_a_service_removed_before_it_was_up_may_answer_503(served: bool, judged: int) -> None:
    """Seed 2026: extra3 was added while the remote was away and removed 5 s after it came
    back, before it had a ready replica; its 503s until the prune were judged as breaks.
    A service that had served is still judged on anything but a refused connection."""
    targets = Targets(lambda: 5)
    targets.expect("extra3", 18013, 3)
    if served:
        targets.answered("extra3")
    targets.leave("extra3")
    load = Load(targets, 1.0, {})
    target = targets.snapshot()[0]
    load._record(target, "post", time.monotonic(), status=503, body="no backend available")
    load._record(target, "fresh", time.monotonic(), error="refused")
    # Seed 2026 again: extra4 never served (its port was taken); the soak's holder of the
    # port ended with a POST on its connection, after the removal.
    load._record(target, "post", time.monotonic(), error="reset")
    assert len(load.tally.failures) == 2 * judged


def test_two_writers_on_a_read_write_once_volume_are_a_break(tmp_path: Path) -> None:
    """The counter app's conflicts.log in its volume is read from the folder its replica
    was given (VOLUME_DATA), also once that replica is gone."""
    from replica_procs import ReplicaProc

    folder = tmp_path / "volumes" / "counter-data" / "data"
    folder.mkdir(parents=True)
    checks = _canary_checks(tmp_path, [], [])
    counter = ReplicaProc(1, "c-counter-1", "counter", "S", 1, {"VOLUME_DATA": str(folder)})
    checks._one_writer([counter])
    assert checks.breaks == []
    (folder / "conflicts.log").write_text("instance b saw instance a's beat advance\n")
    checks._one_writer([])  # the writer that saw it may be gone by now
    assert [b.invariant for b in checks.breaks] == ["rwo"]
    checks._one_writer([])
    assert len(checks.breaks) == 1  # once per line


def test_the_counter_is_one_writer_whatever_the_commits() -> None:
    """The counter is never scaled, and its surge bound is its one replica."""
    shop = initial_shop(_ports(), 3)
    counter = shop.service("counter")
    assert counter is not None and counter.surge_bound() == 1 and counter.port is None
    for seed in range(1, 30):
        history = [shop]
        for planned in make_plan(seed, 600, ()):
            history.append(next_change(planned.kind, planned.draws, history, _ports()).shop)
        assert all(s.service("counter").replicas == 1 for s in history if s.service("counter"))


def test_the_soak_takes_docker_and_etcd() -> None:
    from soak import parse_args

    opts = parse_args(["--runtime", "docker", "--state", "etcd://", "--seed", "3"])
    assert (opts.runtime, opts.etcd) == ("docker", "")  # "": the soak's own three members
    given = parse_args(["--state", "etcd://127.0.0.1:2379/shop"])
    assert given.etcd == "etcd://127.0.0.1:2379/shop" and given.runtime == "process"
    with pytest.raises(SystemExit):
        parse_args(["--state", "/var/lib/gitorch"])
