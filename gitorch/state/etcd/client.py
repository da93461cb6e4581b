"""etcd's v3 API over its JSON gateway (etcd3gw), with failover between members.

The one module that imports ``etcd3gw`` and ``requests``; everything it raises is a
:class:`~gitorch.errors.StateError`:

* :class:`~gitorch.state.errors.StateUnavailable` when no member answers in time, or the
  members that answer have no quorum ("etcdserver: request timed out", no leader);
* :class:`~gitorch.errors.StateError` for anything else etcd refuses.

A request goes to the member that answered last; a member that does not answer (refused,
timed out, no quorum) is skipped for the next one, so losing one member of three costs
one timeout at most, once. Each thread has its own HTTP sessions (``requests`` sessions
are not meant to be shared while in use), so a slow read never delays the lease's
keep-alive on another thread.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_errors

from gitorch.errors import StateError
from gitorch.state.errors import StateUnavailable
from gitorch.state.location import EtcdLocation

#: Seconds one request may take before the next member is tried. A lease's keep-alive
#: must fit well inside its TTL (5 s by default) even when one member hangs.
DEFAULT_TIMEOUT = 1.5

Trace = Callable[[str], None]


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with ``prefix`` (etcd's convention)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw).decode()


@dataclass(frozen=True)
class KeyValue:
    """One key as a range returned it."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=unb64(raw["key"]).decode(),
        value=unb64(raw.get("value", "")),
        mod_revision=int(raw.get("mod_revision", 0)),
        create_revision=int(raw.get("create_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: tuple[dict[str, Any], ...]

    def ranges(self) -> list[list[KeyValue]]:
        """The key-values of every range operation of the branch that ran, in order."""
        found: list[list[KeyValue]] = []
        for response in self.responses:
            if "response_range" in response:
                found.append([_kv(kv) for kv in response["response_range"].get("kvs", [])])
        return found


class EtcdClient:
    """The v3 calls gitorch makes (see the module docstring)."""

    def __init__(self, location: EtcdLocation, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.location = location
        self.timeout = timeout
        self._local = threading.local()
        self._preferred = 0  # index of the member that answered last
        self._trace: dict[int, Trace] = {}

    # ----------------------------------------------------------------- transport

    def _clients(self) -> list[etcd3gw.Etcd3Client]:
        clients: list[etcd3gw.Etcd3Client] | None = getattr(self._local, "clients", None)
        if clients is None:
            loc = self.location
            clients = [
                etcd3gw.Etcd3Client(
                    host=host,
                    port=port,
                    protocol="https" if loc.tls else "http",
                    session=_session(loc),
                    timeout=self.timeout,
                    api_path="/v3/",  # etcd >= 3.4: no discovery round trip
                )
                for host, port in loc.endpoints
            ]
            self._local.clients = clients
        return clients

    def set_trace(self, callback: Trace | None) -> None:
        """Call ``callback`` with each request this thread sends (tests count them)."""
        ident = threading.get_ident()
        if callback is None:
            self._trace.pop(ident, None)
        else:
            self._trace[ident] = callback

    def call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` to ``/v3/PATH`` on the first member that answers."""
        trace = self._trace.get(threading.get_ident())
        if trace is not None:
            trace(path)
        clients = self._clients()
        count = len(clients)
        problems: list[str] = []
        first = self._preferred
        for step in range(count):
            index = (first + step) % count
            client = clients[index]
            try:
                answer: dict[str, Any] = client.post(client.get_url(path), json=payload)
            except (
                etcd_errors.ConnectionFailedError,
                etcd_errors.ConnectionTimeoutError,
            ) as exc:
                problems.append(f"{client.host}:{client.port}: {_reason(exc)}")
                continue
            except etcd_errors.Etcd3Exception as exc:
                text = _reason(exc)
                if _unavailable(text):
                    problems.append(f"{client.host}:{client.port}: {text}")
                    continue
                raise StateError(f"etcd {self.location.url()} refused {path}: {text}") from exc
            except OSError as exc:  # a TLS or socket error below requests
                problems.append(f"{client.host}:{client.port}: {exc}")
                continue
            self._preferred = index
            return answer
        raise StateUnavailable(
            f"etcd {self.location.url()} is unavailable: " + "; ".join(problems),
            detail=("no member answered with a quorum behind it",),
        )

    # ----------------------------------------------------------------- key-values

    def range(
        self,
        key: str,
        *,
        prefix: bool = False,
        serializable: bool = False,
        limit: int = 0,
        keys_only: bool = False,
    ) -> tuple[list[KeyValue], int]:
        """The keys at ``key`` (or under it, ``prefix=True``), sorted by key, and the
        store's revision. ``serializable``: any member's own copy (no quorum needed,
        possibly stale), else linearizable. ``keys_only``: without their values (their
        revisions say whether they changed)."""
        payload: dict[str, Any] = {"key": b64(key)}
        if keys_only:
            payload["keys_only"] = True
        if prefix:
            payload["range_end"] = b64(prefix_end(key))
        if serializable:
            payload["serializable"] = True
        if limit:
            payload["limit"] = limit
        answer = self.call("kv/range", payload)
        revision = int(answer.get("header", {}).get("revision", 0))
        return [_kv(kv) for kv in answer.get("kvs", [])], revision

    def txn(
        self,
        compare: Sequence[dict[str, Any]],
        success: Sequence[dict[str, Any]],
        failure: Sequence[dict[str, Any]] = (),
    ) -> TxnResult:
        answer = self.call(
            "kv/txn",
            {"compare": list(compare), "success": list(success), "failure": list(failure)},
        )
        return TxnResult(
            succeeded=bool(answer.get("succeeded", False)),
            revision=int(answer.get("header", {}).get("revision", 0)),
            responses=tuple(answer.get("responses", [])),
        )

    def wait_for_change(self, key: str, after: int, wait: float) -> bool:
        """Block until ``key`` changes at a revision above ``after`` (True, at once when
        it did already), or ``wait`` seconds pass without a change (False): a watch,
        ended at its first event. Raises :class:`StateUnavailable` when the member
        preferred now does not answer (the caller reads instead: :meth:`call` moves on
        to another member)."""
        trace = self._trace.get(threading.get_ident())
        if trace is not None:
            trace("watch")
        client = self._clients()[self._preferred]
        payload: dict[str, Any] = {"create_request": {"key": b64(key), "start_revision": after + 1}}
        created = False
        try:
            with client.session.post(
                client.get_url("watch"),
                json=payload,
                stream=True,
                timeout=(self.timeout, wait),  # the read timeout: silence for `wait`
            ) as answer:
                if answer.status_code != 200:
                    raise StateUnavailable(
                        f"etcd {client.host}:{client.port} refused a watch: "
                        f"HTTP {answer.status_code}"
                    )
                for line in answer.iter_lines():
                    if not line:
                        continue
                    result = json.loads(line).get("result") or {}
                    created = created or bool(result.get("created"))
                    # Canceled: the revision was compacted away; the caller reads the key.
                    if result.get("events") or result.get("canceled"):
                        return True
        except (requests.RequestException, OSError, ValueError) as exc:
            if created:
                return False  # watching, and nothing changed for `wait` seconds
            raise StateUnavailable(
                f"etcd {client.host}:{client.port} did not start a watch: {_reason(exc)}"
            ) from exc
        return False

    # ----------------------------------------------------------------- leases

    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        return int(self.call("lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew ``lease``; its remaining TTL (-1: it expired, or was revoked)."""
        answer = self.call("lease/keepalive", {"ID": lease})
        result = answer.get("result", answer)
        return int(result.get("TTL", -1))

    def revoke(self, lease: int) -> None:
        """Revoke ``lease``: every key attached to it is deleted at once."""
        try:
            self.call("kv/lease/revoke", {"ID": lease})
        except StateError as exc:
            if "not found" not in exc.message:
                raise

    # ----------------------------------------------------------------- cluster

    def members(self) -> list[dict[str, Any]]:
        """The etcd members as the cluster lists them (name, client URLs)."""
        return list(self.call("cluster/member/list", {}).get("members", []))

    def member_health(self) -> list[dict[str, Any]]:
        """Each configured endpoint: whether it answers, and whether its cluster has a
        leader (a member cut off from the majority answers, without a leader)."""
        found: list[dict[str, Any]] = []
        for client in self._clients():
            endpoint = f"{client.host}:{client.port}"
            try:
                status = client.post(client.get_url("maintenance/status"), json={})
            except (etcd_errors.Etcd3Exception, OSError) as exc:
                found.append({"endpoint": endpoint, "ok": False, "message": _reason(exc)})
                continue
            leader = int(status.get("leader", 0) or 0)
            found.append(
                {
                    "endpoint": endpoint,
                    "ok": leader != 0,
                    "message": "" if leader else "no leader (no quorum)",
                    "version": status.get("version"),
                    "raftLeader": leader != 0
                    and str(leader) == str(status.get("header", {}).get("member_id")),
                }
            )
        return found


class _LocationSession(requests.Session):
    """A session whose CA is the one the location names, whatever the environment says:
    requests lets ``$REQUESTS_CA_BUNDLE``/``$CURL_CA_BUNDLE`` override a session's
    ``verify`` (psf/requests#3829), so with either set (as many hosts do) an ``etcds://``
    location's ``cacert`` was ignored and every request failed certificate verification."""

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        settings: dict[str, Any] = super().merge_environment_settings(
            url, proxies, stream, verify, cert
        )
        if isinstance(self.verify, str) and verify in (None, True):
            settings["verify"] = self.verify
        return settings


def _session(loc: EtcdLocation) -> requests.Session:
    session = _LocationSession()
    if loc.cacert is not None:
        session.verify = loc.cacert
    if loc.cert is not None and loc.key is not None:
        session.cert = (loc.cert, loc.key)
    return session


def _reason(exc: BaseException) -> str:
    detail = getattr(exc, "detail_text", None)
    text = str(detail or exc or type(exc).__name__)
    try:
        import json

        parsed = json.loads(text)
        if isinstance(parsed, dict):
            text = str(parsed.get("error") or parsed.get("message") or text)
    except ValueError:
        pass
    return _plain(text).strip()[:300]


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\"()]+)")
_TIMEOUT = re.compile(r"\((read|connect) timeout=([\d.]+)\)")


def _plain(text: str) -> str:
    """What urllib3's ``HTTPConnectionPool(host=..., port=...): Max retries exceeded with
    url: ... (Caused by NewConnectionError(...: [Errno 111] Connection refused))`` means, in
    its own words (``connection refused``, ``no answer within 1.5 s (read timeout)``): the
    endpoint is said beside it already. Any other text as it is."""
    if "ConnectionPool(" not in text:
        return text
    timeout = _TIMEOUT.search(text)
    if timeout is not None:
        return f"no answer within {timeout.group(2)} s ({timeout.group(1)} timeout)"
    errno = _ERRNO.search(text)
    if errno is not None:
        return errno.group(1).strip().rstrip(".").lower()
    return text


# Answers that mean "this member cannot serve now", not "the request is wrong".
_UNAVAILABLE = (
    "request timed out",
    "no leader",
    "leader changed",
    "not capable",
    "too many requests",
    "unhealthy cluster",
    "stopped",
)


def _unavailable(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _UNAVAILABLE)
