"""Hostile input: every file ends as clean diagnostics with a position, quickly.

Nothing here may raise, hang or crash the interpreter. Inputs that once crashed libyaml's
recursive composer run in a child process, so a regression fails one test instead of
killing the whole pytest run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from manifest_helpers import REPO_ROOT, load, make_file

from gitorch.errors import Diagnostic
from gitorch.manifests.loader import MAX_DOCUMENTS_TOTAL
from gitorch.manifests.yamlload import MAX_DEPTH, MAX_DOCUMENTS_PER_FILE, MAX_NODES_PER_FILE
from gitorch.sources.base import MAX_FILE_BYTES

# Generous: these inputs load in milliseconds; the bound only catches a hang.
DEADLINE = 5.0


def load_one(data: str | bytes, path: str = "hostile.yaml") -> tuple[Diagnostic, ...]:
    """Load one file, check the timing and the shape of every diagnostic."""
    start = time.perf_counter()
    result = load([make_file(path, data)])
    elapsed = time.perf_counter() - start
    assert elapsed < DEADLINE, f"took {elapsed:.1f}s"
    assert result.state is None
    assert result.diagnostics
    for diagnostic in result.diagnostics:
        assert diagnostic.path == path
        assert diagnostic.line >= 1 and diagnostic.column >= 1
        assert diagnostic.message
        assert len(str(diagnostic)) < 500, "a diagnostic must not echo a huge value"
    return result.diagnostics


def billion_laughs() -> str:
    lines = ['lol0: &l0 "lol"']
    for i in range(1, 10):
        refs = ", ".join([f"*l{i - 1}"] * 10)
        lines.append(f"lol{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_at_the_expanding_alias() -> None:
    text = billion_laughs()
    assert len(text) < 1000  # 10**9 nodes once expanded
    (diagnostic,) = load_one(text)
    assert f"more than {MAX_NODES_PER_FILE} YAML nodes" in diagnostic.message
    # The limit is crossed while expanding the 6th level (10**5 * ... nodes).
    assert diagnostic.line == 6
    assert text.splitlines()[diagnostic.line - 1][diagnostic.column - 1] == "*"


def test_alias_bomb_inside_a_service_is_refused() -> None:
    text = (
        "apiVersion: gitorch.dev/v1\nkind: Service\nmetadata: {name: web}\n"
        "x: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(
            f"x{i}: &a{i} [{', '.join(['*a' if i == 0 else f'*a{i - 1}'] * 10)}]\n"
            for i in range(8)
        )
        + "spec:\n  env: {A: *a7}\n"
    )
    (diagnostic,) = load_one(text, "web.yaml")
    assert "YAML nodes" in diagnostic.message


def test_aliases_below_the_limit_are_fine() -> None:
    # Anchors and aliases are legitimate YAML (within one document): a probe shared by
    # readiness and liveness must still load.
    text = (
        "apiVersion: gitorch.dev/v1\nkind: Service\nmetadata: {name: web}\n"
        "spec:\n  image: shop/web:1\n  ports: [{name: http, containerPort: 8080}]\n"
        "  readinessProbe: &probe {httpGet: {path: /healthz, port: http}}\n"
        "  livenessProbe: *probe\n"
    )
    result = load([make_file("web.yaml", text)])
    assert result.diagnostics == ()
    assert result.state is not None
    web = result.state.services["web"]
    assert web.liveness_probe == web.readiness_probe
    assert web.readiness_probe is not None and web.readiness_probe.http_path == "/healthz"


def test_alias_across_documents_is_unknown() -> None:
    text = "a: &x 1\n---\nb: *x\n"
    diagnostics = load_one(text)
    (diagnostic,) = [d for d in diagnostics if "alias" in d.message]
    assert diagnostic.message == "unknown alias '*x'"
    assert (diagnostic.line, diagnostic.column) == (3, 4)


NESTING = {
    # 100k-deep flow nesting, closed and unclosed
    "flow-sequences": "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "flow-mappings-unclosed": "a: " + "{b: " * 100_000 + "\n",
    # block nesting on one line: 200k levels in 400 KB (this one crashed libyaml)
    "block-sequences-one-line": "- " * 200_000 + "x\n",
    "complex-keys-one-line": "? " * 200_000 + "x\n",
    # block mappings one more space per level: ~1400 levels fit in 1 MiB
    "block-mappings-indented": "".join(" " * i + "k:\n" for i in range(1400)),
    "block-sequences-indented": "".join(" " * i + "-\n" for i in range(1400)),
}

_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[2])
from manifest_helpers import load, make_file
data = open(sys.argv[1], "rb").read()
result = load([make_file("deep.yaml", data)])
print(json.dumps([d.to_json() for d in result.diagnostics]))
"""


@pytest.mark.parametrize("case", sorted(NESTING))
def test_deep_nesting_is_refused_without_crashing(case: str, tmp_path: Path) -> None:
    text = NESTING[case]
    assert len(text.encode()) <= MAX_FILE_BYTES
    source = tmp_path / "deep.yaml"
    source.write_text(text)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(source), str(Path(__file__).parent)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"child died ({done.returncode}): {done.stderr[-2000:]}"
    assert time.perf_counter() - start < DEADLINE + 2  # plus interpreter start-up
    diagnostics = json.loads(done.stdout)
    assert diagnostics, "deep nesting must be reported"
    depth_problems = [d for d in diagnostics if "nesting deeper than" in d["message"]]
    yaml_problems = [d for d in diagnostics if d["message"].startswith("invalid YAML")]
    # Refused for depth, or for what libyaml or the builder reject first (a syntax error,
    # a collection used as a key).
    key_problems = [d for d in diagnostics if d["message"] == "mapping keys must be scalars"]
    assert depth_problems or yaml_problems or key_problems, diagnostics
    for d in diagnostics:
        assert d["line"] >= 1 and d["column"] >= 1 and d["path"] == "deep.yaml"
    if depth_problems:
        (problem,) = depth_problems
        assert problem["message"] == f"nesting deeper than {MAX_DEPTH} levels"


def test_nesting_within_the_limit_still_loads_as_data() -> None:
    # 30 levels is odd but legal: the document is judged by the schema, not refused.
    text = "apiVersion: gitorch.dev/v1\nkind: Service\nmetadata:\n  name: web\n  x:\n    "
    text += "- " * 30 + "1\n"
    diagnostics = load_one(text)
    assert [d.message for d in diagnostics] == [
        "missing required field 'spec'",
        "unknown field 'x'",
    ]
    assert diagnostics[1].field == "metadata.x"
    assert (diagnostics[1].line, diagnostics[1].column) == (5, 3)


def test_binary_file() -> None:
    data = b"\x7fELF\x02\x01\x01\x00\x00" + bytes(range(256)) * 8
    (diagnostic,) = load_one(data)
    assert diagnostic.message.startswith("binary file (contains NUL bytes)")
    assert (diagnostic.line, diagnostic.column) == (1, 8)


def test_non_utf8_points_at_the_bad_byte() -> None:
    data = "apiVersion: gitorch.dev/v1\nkind: Service\nmetadata:\n  name: caf\xe9\n".encode(
        "latin-1"
    )
    (diagnostic,) = load_one(data)
    assert diagnostic.message == "not valid UTF-8 (byte 0xe9)"
    assert (diagnostic.line, diagnostic.column) == (4, 12)


def test_utf16_file_is_not_text_for_us() -> None:
    data = "apiVersion: gitorch.dev/v1\n".encode("utf-16")
    (diagnostic,) = load_one(data)
    assert "NUL" in diagnostic.message or "UTF-8" in diagnostic.message


def test_a_million_documents_do_not_fit_so_the_per_file_limit_is_tested() -> None:
    # "---\n" * 1_000_000 is 4 MB, and the source layer refuses files over 1 MiB; the
    # largest empty-document file that fits still crosses the per-file limit.
    count = MAX_FILE_BYTES // 4
    assert count > MAX_DOCUMENTS_PER_FILE
    (diagnostic,) = load_one("---\n" * count)
    assert diagnostic.message == f"more than {MAX_DOCUMENTS_PER_FILE} documents in one file"
    # It points at the "---" that starts the first document over the limit (line N holds
    # the start of document N).
    assert diagnostic.line == MAX_DOCUMENTS_PER_FILE + 1


def test_documents_over_the_file_limit_with_content() -> None:
    text = "---\napiVersion: gitorch.dev/v1\n" * (MAX_DOCUMENTS_PER_FILE + 10)
    diagnostics = load_one(text)
    limit = [d for d in diagnostics if "documents in one file" in d.message]
    assert len(limit) == 1
    # Every document read before the limit is still judged (each lacks kind).
    assert len(diagnostics) == MAX_DOCUMENTS_PER_FILE + 1


def test_repo_wide_document_limit_across_several_files() -> None:
    per_file = MAX_DOCUMENTS_PER_FILE
    files_needed = MAX_DOCUMENTS_TOTAL // per_file + 1
    files = [make_file(f"many/{i:02d}.yaml", "---\n" * per_file) for i in range(files_needed)]
    start = time.perf_counter()
    result = load(files)
    assert time.perf_counter() - start < DEADLINE
    assert result.state is None
    (diagnostic,) = result.diagnostics
    assert diagnostic.message == f"more than {MAX_DOCUMENTS_TOTAL} documents in the repo"
    # Reported on the file that crossed the limit, the last one in path order.
    assert diagnostic.path == files[-1].path
    assert (diagnostic.line, diagnostic.column) == (1, 1)


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("apiVersion: !!python/object:os.system {}\n", "!!python/object:os.system"),
        ("kind: !!python/object/apply:os.system ['true']\n", "!!python/object/apply:os.system"),
        ("kind: !!python/name:os.system\n", "!!python/name:os.system"),
        ("data: !!binary aGVsbG8=\n", "!!binary"),
        ("when: !!timestamp 2001-12-14\n", "!!timestamp"),
        ("items: !!set {a, b}\n", "!!set"),
        ("ref: !Ref other\n", "!Ref"),
        # with anchors and aliases around: the same answer
        ("a: &x 1\nb: *x\nc: !!python/object:os.system {}\n", "!!python/object:os.system"),
        ("a: &x 1\nb: *x\nc: !!binary aGVsbG8=\n", "!!binary"),
    ],
)
def test_unknown_tags_are_refused_not_constructed(text: str, tag: str) -> None:
    (diagnostic,) = load_one(text)
    assert diagnostic.message.startswith(f"unsupported YAML tag '{tag}'")
    line = text.splitlines()[diagnostic.line - 1]
    assert line[diagnostic.column - 1 :].startswith("!")


def test_huge_scalar_is_reported_short() -> None:
    image = "x" * (MAX_FILE_BYTES - 200)
    text = f"apiVersion: gitorch.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  image: {image}\n"
    (diagnostic,) = load_one(text)
    assert diagnostic.field == "spec.image"
    assert (diagnostic.line, diagnostic.column) == (6, 10)
    assert "is too long (at most 255 characters)" in diagnostic.message
    assert f"({len(image)} characters)" in diagnostic.message


@pytest.mark.parametrize(
    "text",
    [
        "apiVersion: gitorch.dev/v1\nkind: " + "K" * 500_000 + "\n",
        "apiVersion: gitorch.dev/v1\nkind: Service\nmetadata:\n  name: " + "n" * 500_000 + "\n",
        "apiVersion: gitorch.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  "
        + "k" * 500_000
        + ": 1\n",
        "a: " + "1" * 100_000 + "\n",
        "k: 1\n" + "k" * 500_000 + ": 1\n" + "k" * 500_000 + ": 2\n",
    ],
    ids=["kind", "name", "unknown-field", "integer", "duplicate-key"],
)
def test_huge_values_in_any_message_are_cut(text: str) -> None:
    load_one(text)  # load_one bounds every diagnostic's length
