"""HAProxy's request log, read into per-backend latency histograms."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Mapping
from pathlib import Path

from gitorch.traffic.figures import bucket_of, empty_histogram
from gitorch.traffic.haproxy.errors import HAProxyError


class LatencyLog:
    """Per-backend latency histograms built from HAProxy's own request log.

    HAProxy keeps no latency histogram, but it logs every request, asynchronously: each
    http frontend sends one datagram per request to a UDP socket on 127.0.0.1 that this
    object owns (``log 127.0.0.1:PORT format raw``, ``log-format``
    :meth:`log_format`: a token, the frontend, the server's address, the status, the
    connect and response times). A reader thread puts each line's connect + response
    time (from picking the server to its response head, as the built-in plane counts)
    into the histogram of the backend at that address (the same buckets as
    :mod:`gitorch.traffic.figures`).

    UDP rather than a unix datagram socket: Linux queues at most
    ``net.unix.max_dgram_qlen`` (10) datagrams on those, a UDP socket as many as its
    receive buffer holds. HAProxy never waits for the reader: when the buffer is full the
    kernel drops the line (counted per socket, :attr:`overflowed`), when HAProxy cannot
    send it HAProxy does (``DroppedLogs``); :attr:`HAProxyDataPlane.dropped_log_lines`
    adds both. The histogram then has fewer samples than the stats have requests; its
    quantiles stay right as long as drops do not pick slow or fast requests.
    The token keeps lines from any other local sender out.
    """

    #: Receive buffer asked for (the kernel caps it at net.core.rmem_max).
    RCVBUF = 8 << 20

    def __init__(
        self,
        host: str = "127.0.0.1",
        rcvbuf: int = RCVBUF,
        *,
        port: int = 0,
        token: str | None = None,
    ) -> None:
        """``port`` and ``token``: those of a previous reader of a HAProxy that keeps
        running (a restarted daemon takes its lines over without a reload)."""
        self.token = token or secrets.token_hex(8)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._sock.bind((host, port))
            self._sock.settimeout(0.2)  # the reader checks for close() this often
        except OSError as exc:
            self._sock.close()
            raise HAProxyError(f"cannot open the latency log socket: {exc}") from exc
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._lock = threading.Lock()
        self._backends: dict[str, dict[str, str]] = {}  # frontend -> address -> backend id
        self._latency: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        self.lines = 0  # lines put into a histogram
        self.unattributed = 0  # lines for an address no current backend has
        self.ignored = 0  # no server reached (-1 times, <NOSRV>), foreign or malformed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="haproxy-log", daemon=True)
        self._thread.start()

    def log_format(self) -> str:
        """The ``log-format`` of an http frontend (fields :meth:`_take` reads)."""
        return f"{self.token} %f %si:%sp %ST %Tc %Tr"

    def route(self, frontends: Mapping[str, Mapping[str, str]]) -> None:
        """Which backend id each server address is, per frontend name; histograms of
        backends in none of them are forgotten."""
        known = {bid for addresses in frontends.values() for bid in addresses.values()}
        with self._lock:
            self._backends = {f: dict(addresses) for f, addresses in frontends.items()}
            for gone in self._latency.keys() - known:
                del self._latency[gone]
                self._sums.pop(gone, None)

    def histograms(self) -> dict[str, tuple[list[int], float]]:
        """Every backend's (bucket counts, sum in ms), to be kept across a restart."""
        with self._lock:
            return {b: (list(c), self._sums[b]) for b, c in self._latency.items()}

    def restore(self, saved: Mapping[str, tuple[list[int], float]]) -> None:
        """Histograms a previous reader kept (:meth:`histograms`), added to these."""
        with self._lock:
            for backend_id, (counts, total) in saved.items():
                if len(counts) != len(empty_histogram()):
                    continue
                mine = self._latency.setdefault(backend_id, empty_histogram())
                for index, count in enumerate(counts):
                    mine[index] += int(count)
                self._sums[backend_id] = self._sums.get(backend_id, 0.0) + float(total)

    def histogram(self, backend_id: str) -> tuple[tuple[int, ...], float]:
        """(bucket counts, sum in ms) of one backend so far (empty when none)."""
        with self._lock:
            counts = self._latency.get(backend_id)
            if counts is None:
                return tuple(empty_histogram()), 0.0
            return tuple(counts), self._sums[backend_id]

    @property
    def overflowed(self) -> int:
        """Lines the kernel dropped because the receive buffer was full (Linux's per
        socket ``drops`` in /proc/net/udp; 0 where that is not readable)."""
        try:
            inode = str(os.fstat(self._sock.fileno()).st_ino)
            lines = Path("/proc/net/udp").read_text().splitlines()[1:]
        except OSError:
            return 0
        for line in lines:
            fields = line.split()
            if len(fields) >= 13 and fields[9] == inode:
                return int(fields[-1])
        return 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self._take(data)

    def _take(self, data: bytes) -> None:
        fields = data.split()
        if len(fields) != 6 or fields[0] != self.token.encode():
            self.ignored += 1
            return
        _, frontend, address, _status, connect_ms, response_ms = fields
        try:
            connect, response = int(connect_ms), int(response_ms)
        except ValueError:
            connect = response = -1
        if connect < 0 or response < 0:
            self.ignored += 1  # no response head from a server (or garbage): nothing to time
            return
        took = connect + response
        with self._lock:
            backend_id = self._backends.get(frontend.decode(), {}).get(address.decode())
            if backend_id is None:
                self.unattributed += 1
                return
            counts = self._latency.get(backend_id)
            if counts is None:
                counts = self._latency[backend_id] = empty_histogram()
                self._sums[backend_id] = 0.0
            counts[bucket_of(took)] += 1
            self._sums[backend_id] += took
            self.lines += 1
