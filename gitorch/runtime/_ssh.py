"""Docker over ssh with the settings and timeouts a node asks for.

The docker SDK speaks to ``ssh://`` endpoints through paramiko (or by shelling out to
``ssh``, whose reads have no timeout: a silent host would hang a pass for good). Its
paramiko transport reads ``~/.ssh/config`` and ``~/.ssh/known_hosts`` and refuses unknown
host keys, as gitorch wants, but connects without a timeout and takes no key or known
hosts file of the node's own. :class:`NodeSSHAdapter` adds those: the TCP connect's
timeout (the caller's), a longer one for the handshake (:data:`HANDSHAKE_TIMEOUT`), the
node's ``identityFile`` and ``knownHostsFile`` (from the secrets directory), and keeps
the rest (the user's ssh config, agent, default keys).

The SDK also keeps a connection pool per request URL, each with an ssh session open;
this adapter keeps one pool, of at most as many sessions as calls may run at once.

The SDK builds its ssh adapter inside ``APIClient.__init__`` with no way to pass one in,
so :func:`ssh_client` makes a client without contacting anything, mounts this adapter
where the SDK mounts its own, and then asks the engine for its API version, as
``version="auto"`` does (pinned docker SDK 7.x).
"""

from __future__ import annotations

from typing import Any

import docker
import paramiko
from docker.transport.sshconn import SSHHTTPAdapter

#: The API version a client is made with before the engine is asked (never used for a
#: request: the engine's own replaces it first, as ``version="auto"`` would, but after
#: the client is set up). Docker 20.10's is 1.41.
PLACEHOLDER_VERSION = "1.41"
#: Seconds a host that accepted the TCP connection gets for ssh's banner, key exchange,
#: authentication and opening a session: a live host under load may need seconds for
#: what takes ~0.2 s when idle (paramiko is Python), while a host that is cut off is
#: still found out by the TCP connect's own (shorter) timeout.
HANDSHAKE_TIMEOUT = 15.0


class NodeSSHAdapter(SSHHTTPAdapter):
    """The SDK's paramiko adapter with timeouts and the node's key and known hosts."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        identity_file: str | None = None,
        known_hosts_file: str | None = None,
        max_pool_size: int = 6,
    ) -> None:
        self._connect_timeout = timeout
        self._identity_file = identity_file
        self._known_hosts_file = known_hosts_file
        # Idle connections are open ssh sessions: keep no more than calls may use at once.
        super().__init__(base_url, timeout, max_pool_size=max_pool_size, shell_out=False)

    def get_connection(self, url: str, proxies: Any = None) -> Any:
        """One pool for the engine. The SDK keys its pools by the whole request URL, so
        each path (``/containers/ID/json``...) got a pool of its own, holding an ssh
        session open: past sshd's MaxSessions (10) the engine refused every new one."""
        return super().get_connection("http+docker://ssh", proxies)

    def _connect(self) -> None:
        """Connect; a failure closes what paramiko opened. (Its client keeps the transport
        of a refused handshake, a thread and a socket, open for good: a node with a wrong
        host key leaked one of each per pass, and filled sshd's MaxStartups until the
        host's other nodes were refused too.)"""
        try:
            super()._connect()
        except BaseException:
            self.ssh_client.close()
            raise

    def _create_paramiko_client(self, base_url: str) -> None:
        super()._create_paramiko_client(base_url)  # ~/.ssh/config, system known hosts
        client: paramiko.SSHClient = self.ssh_client
        if self._known_hosts_file:
            client.load_host_keys(self._known_hosts_file)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        params: dict[str, Any] = self.ssh_params
        handshake = max(self._connect_timeout, HANDSHAKE_TIMEOUT)
        params.update(
            timeout=self._connect_timeout,
            banner_timeout=handshake,
            auth_timeout=handshake,
            channel_timeout=handshake,
        )
        if self._identity_file:
            params["key_filename"] = self._identity_file
        if params.get("port") is None:
            params["port"] = 22


def ssh_client(
    endpoint: str,
    timeout: float | None,
    *,
    identity_file: str | None,
    known_hosts_file: str | None,
    version: str = "auto",
    sessions: int = 6,
) -> docker.APIClient:
    """A low-level client for an ``ssh://`` endpoint (connects, and asks the version)."""
    client = docker.APIClient(
        base_url="tcp://gitorch-ssh.invalid:1", version=PLACEHOLDER_VERSION, timeout=timeout
    )
    adapter = NodeSSHAdapter(
        endpoint,
        timeout=timeout or 30.0,
        identity_file=identity_file,
        known_hosts_file=known_hosts_file,
        max_pool_size=sessions,
    )
    client.trust_env = False  # no proxy or CA bundle from the environment
    client.mount("http+docker://ssh", adapter)
    client._custom_adapter = adapter
    client.base_url = "http+docker://ssh"
    try:
        client._version = client._retrieve_server_version() if version == "auto" else version
    except BaseException:
        client.close()  # the adapter's ssh session with it
        raise
    return client
