"""Commands import only what they need: `gitorch --help` loads no command, `validate` and
`plan` load neither the reconciler nor docker, the data plane or the API server.

Each case runs the command in a fresh interpreter (as `python -m gitorch` does) and reads
`sys.modules` after it, so a stray top-level import anywhere on the path shows up here.
How fast that makes them is measured by bench/bench_cli_start.py, not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import REPO_ROOT, cli_env

from gitorch.cli import COMMANDS, build_parser

#: Run gitorch's main in this interpreter, then print its exit code and loaded modules.
PROBE = """
import json, sys
from gitorch.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
print("\\nPROBE " + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

#: What neither validate nor plan may load: the world-changing side and the daemon.
NEVER_FOR_VALIDATE_OR_PLAN = (
    "gitorch.apply",
    # The data plane: the built-in balancer, HAProxy, its workers. (The routing table is
    # data, which the plan's decision computes; traffic.holders names a port's holder.)
    "gitorch.traffic.builtin",
    "gitorch.traffic.haproxy",
    "gitorch.traffic.workers",
    "gitorch.traffic.listeners",
    "gitorch.traffic.proxy",
    "gitorch.traffic._http",
    "gitorch.api",
    "gitorch.daemon",
    "gitorch.analysis",
    "docker",
)


#: What a plan of one node with nothing running needs neither: the HTTP client (with ssl
#: and email: imported by the first HTTP probe) and a thread pool (to observe several
#: nodes or probe several replicas at once).
NOT_FOR_A_PLAN_OF_ONE_IDLE_NODE = ("urllib.request", "http.client", "concurrent.futures")


def loaded_by(tmp_path: Path, *args: str) -> tuple[int, set[str], str]:
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", PROBE, *args],
        cwd=REPO_ROOT,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output, marker, report = done.stdout.rpartition("\nPROBE ")
    assert marker, f"the probe did not report: {done.stdout}{done.stderr}"
    data = json.loads(report)
    return data["code"], set(data["modules"]), output + done.stderr


def offending(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_help_lists_every_command_and_imports_none(tmp_path: Path) -> None:
    code, modules, output = loaded_by(tmp_path, "--help")
    assert code == 0
    for name, _, help_text in COMMANDS:
        assert f"{name}  " in output and help_text.split()[0] in output
    assert offending(modules, ("gitorch.commands", "rich", "yaml", "git", "docker")) == []


def test_validate_imports_no_reconciler_docker_or_data_plane(tmp_path: Path) -> None:
    code, modules, output = loaded_by(tmp_path, "validate", "--path", "examples/repo")
    assert code == 0, output
    assert "valid:" in output
    assert "gitorch.manifests.loader" in modules  # the probe saw the command's own work
    assert offending(modules, NEVER_FOR_VALIDATE_OR_PLAN) == []
    assert offending(modules, ("gitorch.commands.plan", "gitorch.live", "gitorch.state")) == []


def test_plan_imports_no_reconciler_docker_or_data_plane(tmp_path: Path) -> None:
    # --runtime process: with a docker node, plan must ask the engine, through the SDK.
    code, modules, output = loaded_by(
        tmp_path, "plan", "--path", "examples/repo", "--runtime", "process"
    )
    assert code == 2, output  # nothing applied in a fresh state directory: changes
    assert "gitorch.diff.compute" in modules and "gitorch.live.observe" in modules
    assert offending(modules, NEVER_FOR_VALIDATE_OR_PLAN) == []
    assert offending(modules, NOT_FOR_A_PLAN_OF_ONE_IDLE_NODE) == []


def test_plan_json_imports_no_renderer_but_json(tmp_path: Path) -> None:
    code, modules, output = loaded_by(
        tmp_path, "plan", "--path", "examples/repo", "--runtime", "process", "--format", "json"
    )
    assert code == 2, output
    assert offending(modules, NEVER_FOR_VALIDATE_OR_PLAN) == []
    assert offending(modules, ("gitorch.diff.render.text", "gitorch.diff.render.markdown")) == []
    assert offending(modules, NOT_FOR_A_PLAN_OF_ONE_IDLE_NODE) == []
    # The JSON goes out as orjson's bytes: no console (rich) on the way.
    assert offending(modules, ("rich",)) == []


def test_the_lazy_listing_is_what_the_command_modules_register() -> None:
    """COMMANDS' help lines are what `--help` shows without importing the modules; each
    must be the line the module itself registers, and every registered command listed."""
    assert build_parser().format_help() == build_parser(every=True).format_help()
    for name, _, _ in COMMANDS:
        assert build_parser(name).format_help() == build_parser(every=True).format_help()


@pytest.mark.parametrize("name", [name for name, _, _ in COMMANDS])
def test_each_command_parses_its_own_options(name: str) -> None:
    """The command named on the line gets its full parser (not the placeholder)."""
    with pytest.raises(SystemExit) as exit_:
        build_parser(name).parse_args([name, "--help"])
    assert exit_.value.code == 0
