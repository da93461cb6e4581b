"""A remote node's TLS and ssh files, resolved under the secrets directory (no engine)."""

from __future__ import annotations

from pathlib import Path

from gitorch.live.inventory import NodeTarget, engine_access
from gitorch.manifests.model import TLSConfig


def _h1() -> NodeTarget:
    return NodeTarget(
        "h1",
        "docker",
        "tcp://198.18.7.2:2376",
        address="198.18.7.2",
        tls=TLSConfig(ca_cert="hosts/ca.pem"),
    )


def test_without_a_secrets_dir_the_problem_says_to_give_one() -> None:
    # Seen as `gitorch proxy stop` after the daemon had stopped (no daemon.json to read
    # its --secrets-dir from): the message named plan, nodes and status only.
    access = engine_access(_h1(), None)
    assert access.problem == (
        "node h1: runtime.tls.caCert names 'hosts/ca.pem', but no --secrets-dir was given "
        "(give it; plan, nodes, status and proxy stop otherwise read a running daemon's)"
    )


def test_a_name_in_the_secrets_dir_resolves(tmp_path: Path) -> None:
    (tmp_path / "hosts").mkdir()
    (tmp_path / "hosts" / "ca.pem").write_text("pem\n")
    access = engine_access(_h1(), tmp_path)
    assert access.problem is None and access.ca_cert == str(tmp_path / "hosts" / "ca.pem")
