"""What an etcd endpoint that does not answer is said to do, in `gitorch status` and in a
StateUnavailable: the cause in a few words ("connection refused"), not urllib3's whole
"HTTPConnectionPool(...): Max retries exceeded with url: ... (Caused by ...)" line."""

from __future__ import annotations

import pytest

from gitorch.state.etcd.client import _reason

REFUSED = (
    "HTTPConnectionPool(host='127.0.0.1', port=23379): Max retries exceeded with url: "
    "/v3/maintenance/status (Caused by NewConnectionError(\"HTTPConnection(host='127.0.0.1',"
    ' port=23379): Failed to establish a new connection: [Errno 111] Connection refused"))'
)
READ_TIMEOUT = "HTTPConnectionPool(host='10.0.0.1', port=2379): Read timed out. (read timeout=1.5)"
CONNECT_TIMEOUT = (
    "HTTPConnectionPool(host='10.0.0.1', port=2379): Max retries exceeded with url: "
    "/v3/kv/range (Caused by ConnectTimeoutError(<urllib3.connection.HTTPConnection object "
    "at 0x7f0>, 'Connection to 10.0.0.1 timed out. (connect timeout=1.5)'))"
)
UNRESOLVED = (
    "HTTPSConnectionPool(host='etcd-1', port=2379): Max retries exceeded with url: "
    '/v3/kv/range (Caused by NameResolutionError("<urllib3.connection.HTTPSConnection '
    "object at 0x7f0>: Failed to resolve 'etcd-1' ([Errno -2] Name or service not known)\"))"
)


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (REFUSED, "connection refused"),
        (READ_TIMEOUT, "no answer within 1.5 s (read timeout)"),
        (CONNECT_TIMEOUT, "no answer within 1.5 s (connect timeout)"),
        (UNRESOLVED, "name or service not known"),
        ('{"error": "etcdserver: no leader", "code": 14}', "etcdserver: no leader"),
        ("HTTPConnectionPool(host='h', port=1): something new", "HTTPConnectionPool"),
    ],
)
def test_the_reason_is_the_cause_in_a_few_words(raw: str, said: str) -> None:
    assert _reason(OSError(raw)).startswith(said)
