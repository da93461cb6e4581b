"""A Node's engine credentials are checked at validate time: files named inside the
operator's secrets directory (never an absolute path or one that climbs out), tls only on
tcp:// endpoints, ssh only on ssh:// ones, a client certificate with its key. Each
refusal has file:line; a valid Node keeps its TLS, ssh and ingress settings."""

from __future__ import annotations

from manifest_helpers import make_file

from gitorch.manifests import LoadResult, ManifestLoader


def node(runtime: str, extra: str = "") -> str:
    return (
        "apiVersion: gitorch.dev/v1\nkind: Node\nmetadata:\n  name: h1\nspec:\n"
        f"  runtime:\n{runtime}  address: 10.0.0.1\n{extra}"
    )


TLS = """    driver: docker
    endpoint: tcp://10.0.0.1:2376
    tls:
      caCert: {ca}
      clientCert: hosts/client.pem
      clientKey: hosts/client-key.pem
"""
SSH = """    driver: docker
    endpoint: {endpoint}
    ssh:
      identityFile: {key}
      knownHostsFile: hosts/known_hosts
"""


def load(text: str) -> LoadResult:
    return ManifestLoader().load([make_file("nodes.yaml", text)], revision="test")


def problems(result: LoadResult) -> list[str]:
    return [str(d) for d in result.diagnostics]


def test_a_tls_node_and_an_ssh_node_keep_their_settings() -> None:
    result = load(node(TLS.format(ca="hosts/ca.pem"), "  ingress: always\n"))
    assert result.ok, problems(result)
    h1 = result.state.nodes["h1"]  # type: ignore[union-attr]
    assert h1.tls is not None and h1.tls.ca_cert == "hosts/ca.pem" and h1.tls.verify
    assert h1.ingress == "always"
    result = load(node(SSH.format(endpoint="ssh://root@10.0.0.1", key="hosts/id")))
    assert result.ok, problems(result)
    h1 = result.state.nodes["h1"]  # type: ignore[union-attr]
    assert h1.ssh is not None and h1.ssh.identity_file == "hosts/id"
    assert h1.ingress == "replicas"  # the default, not written into the canonical form
    assert "ingress" not in h1.canonical["spec"]


def test_a_path_outside_the_secrets_directory_is_refused_with_its_line() -> None:
    for ca in ("/etc/ssl/ca.pem", "hosts/../../ca.pem"):
        found = problems(load(node(TLS.format(ca=ca))))
        assert found == [
            "nodes.yaml:10:15: spec.runtime.tls.caCert: caCert must be a relative path "
            "inside the operator's secrets directory"
        ], found
    found = problems(load(node(SSH.format(endpoint="ssh://root@10.0.0.1", key="/root/.ssh/id"))))
    assert len(found) == 1 and "spec.runtime.ssh.identityFile" in found[0], found


def test_tls_and_ssh_go_with_their_endpoints_and_a_certificate_with_its_key() -> None:
    wrong_tls = TLS.format(ca="ca.pem").replace("tcp://10.0.0.1:2376", "ssh://root@10.0.0.1")
    found = problems(load(node(wrong_tls)))
    assert len(found) == 1 and "tls is for tcp:// endpoints only" in found[0], found
    found = problems(load(node(SSH.format(endpoint="tcp://10.0.0.1:2376", key="id"))))
    assert len(found) == 1 and "ssh is for ssh:// endpoints only" in found[0], found
    keyless = TLS.format(ca="ca.pem").replace("      clientKey: hosts/client-key.pem\n", "")
    found = problems(load(node(keyless)))
    assert len(found) == 1 and "clientCert and clientKey go together" in found[0], found
    found = problems(load(node(TLS.format(ca="ca.pem"), "  ingress: sometimes\n")))
    assert len(found) == 1 and "spec.ingress" in found[0], found
