"""A container reaches the service it depends on through the daemon's endpoint on the
same host (examples/repo-docker's web -> api), and the daemon says when it cannot: a
loopback ``--lb-host`` (the default) is not where ``host-gateway`` leads, and a proxy
adopted from an earlier daemon keeps the address it was started with."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from listen_ports import free_port
from reconciler_helpers import Cluster, commit, converged, gitorch, wait_for

pytestmark = pytest.mark.docker

WEB_AND_API = """apiVersion: gitorch.dev/v1
kind: Service
metadata: {{name: api}}
spec:
  image: gitorch-example/api:1
  replicas: 1
  ports: [{{name: http, containerPort: 8080}}]
  expose: {{port: {api_port}, targetPort: http, protocol: http}}
  readinessProbe:
    httpGet: {{path: /cgi-bin/healthz, port: http}}
    periodSeconds: 1
---
apiVersion: gitorch.dev/v1
kind: Service
metadata: {{name: web}}
spec:
  image: gitorch-example/web:1
  replicas: 1
  dependsOn: [api]
  ports: [{{name: http, containerPort: 8080}}]
  expose: {{port: {web_port}, targetPort: http, protocol: http}}
  readinessProbe:
    httpGet: {{path: /cgi-bin/healthz, port: http}}
    periodSeconds: 1
"""


def web_asks_api(web_port: int) -> tuple[int, str]:
    """What web's /cgi-bin/api answers (it calls $API_SERVICE_HOST:$API_SERVICE_PORT)."""
    url = f"http://127.0.0.1:{web_port}/cgi-bin/api"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (local test URL)
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("cluster", ["sqlite"], indirect=True)
def test_a_container_reaches_its_dependency_once_the_endpoints_leave_loopback(
    docker_cluster: Cluster,
) -> None:
    cluster = docker_cluster
    api_port, web_port = free_port(), free_port()
    sha = commit(
        cluster.repo,
        {"shop.yaml": WEB_AND_API.format(api_port=api_port, web_port=web_port)},
        "web and api",
    )

    # The default --lb-host (127.0.0.1): web runs, but cannot reach api, and the daemon
    # says why and what to do.
    first = cluster.daemon()
    wait_for(
        "web converged",
        lambda: converged(first.service("web"), sha, 1),
        90,
        describe=first.log_tail,
    )
    assert web_asks_api(web_port)[0] == 502
    assert "cannot reach the services they depend on" in first.log_tail(200)
    first.stop()

    # A daemon given another address adopts the running proxy, which keeps its own:
    # said, not silently ignored.
    second = cluster.daemon(extra=["--lb-host", "0.0.0.0"])
    wait_for(
        "the warning",
        lambda: "keeps its address (127.0.0.1, not 0.0.0.0 as given)" in second.log_tail(200),
        30,
        describe=second.log_tail,
    )
    second.stop()
    assert gitorch("proxy", "stop", *cluster.state_args, cwd=cluster.repo).code == 0

    # Started again on every address: web's answer comes from api, through its endpoint.
    third = cluster.daemon(extra=["--lb-host", "0.0.0.0"])
    wait_for(
        "web converged",
        lambda: converged(third.service("web"), sha, 1),
        90,
        describe=third.log_tail,
    )
    wait_for(
        "web reaches api", lambda: web_asks_api(web_port)[0] == 200, 30, describe=third.log_tail
    )
    status, text = web_asks_api(web_port)
    assert "app=api" in text, (status, text)
    assert "cannot reach" not in third.log_tail(200)
