"""Where a replica reaches its dependencies (gitorch/traffic/discovery.py): its own host's
ingress, at an address valid where it runs, never 127.0.0.1 inside a container."""

from __future__ import annotations

from gitorch.traffic.discovery import HOST_GATEWAY, discovery_for, unreachable_from_local_containers

PORTS = {"api": 7001, "auth-db": 7002}


def test_a_container_on_a_remote_host_gets_its_hosts_address_and_names() -> None:
    found = discovery_for(PORTS, host_ingress="10.0.0.3", local_ingress="127.0.0.1", container=True)
    assert dict(found.env) == {
        "API_SERVICE_HOST": "10.0.0.3",
        "API_SERVICE_PORT": "7001",
        "AUTH_DB_SERVICE_HOST": "10.0.0.3",
        "AUTH_DB_SERVICE_PORT": "7002",
    }
    assert dict(found.hosts) == {
        "api.gitorch.internal": "10.0.0.3",
        "auth-db.gitorch.internal": "10.0.0.3",
    }


def test_a_container_on_the_daemons_host_never_gets_a_loopback_address() -> None:
    for loopback in ("127.0.0.1", "localhost", "::1"):
        found = discovery_for(PORTS, host_ingress=None, local_ingress=loopback, container=True)
        assert found.env["API_SERVICE_HOST"] == "api.gitorch.internal", loopback
        assert found.hosts["api.gitorch.internal"] == HOST_GATEWAY
        assert not any(v.startswith("127.") for v in found.env.values())


def test_a_container_on_the_daemons_host_with_a_routable_ingress_uses_it() -> None:
    found = discovery_for(PORTS, host_ingress=None, local_ingress="192.0.2.7", container=True)
    assert found.env["API_SERVICE_HOST"] == "192.0.2.7"
    assert found.hosts["api.gitorch.internal"] == "192.0.2.7"


def test_a_process_replica_shares_the_daemons_host_and_gets_no_names() -> None:
    found = discovery_for(PORTS, host_ingress=None, local_ingress="127.0.0.1", container=False)
    assert found.env["API_SERVICE_HOST"] == "127.0.0.1"
    assert not found.hosts


def test_no_dependencies_no_discovery() -> None:
    found = discovery_for({}, host_ingress="10.0.0.3", local_ingress="127.0.0.1", container=True)
    assert not found.env and not found.hosts


def test_a_loopback_ingress_is_said_unreachable_from_containers_on_its_host() -> None:
    why = unreachable_from_local_containers("127.0.0.1", ["local", "b"])
    assert why is not None
    assert "127.0.0.1 only" in why and "node b, local" in why and "--lb-host 0.0.0.0" in why
    for reachable in ("0.0.0.0", "", "::", "172.17.0.1", "192.0.2.7"):
        assert unreachable_from_local_containers(reachable, ["local"]) is None, reachable
    assert unreachable_from_local_containers("127.0.0.1", []) is None  # no container here
