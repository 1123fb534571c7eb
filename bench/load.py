"""A small closed-loop HTTP/1.1 load generator (asyncio protocols, keep-alive connections).

Used by bench/run.sh when ``wrk`` is not installed, and to cross-check wrk's figures.

    .venv/bin/python bench/load.py run --url http://127.0.0.1:4000/cubejs-api/v1/load \\
        --bodies bodies.txt --connections 16 --duration 10
    .venv/bin/python bench/load.py selftest --connections 16 --duration 5

``run`` opens ``--connections`` persistent connections; each sends one request, waits for the
whole answer, records the latency and sends the next, until ``--duration`` seconds have
passed. With ``--bodies`` (one JSON body per line) each request is a POST of the next body in
turn (one rotation shared by all connections); without it a GET. The answer must carry Content-Length or be chunked (as twisted.web's
is). It prints one line in the same format as bench/wrk.lua::

    RESULT requests=... duration_s=... rps=... p50_ms=... p90_ms=... p99_ms=... max_ms=... errors=... non200=...

plus ``client_cpu=`` (the share of one core this process used; near 100 % would mean the
client, not the server, is the limit).

``selftest`` starts a trivial HTTP server in a child process (a fixed chunked JSON answer of
the size of the simple /v1/load answer) and drives it, to show how many requests per second
this client can make: run it on two cores (the child is pinned to the other one, if any).
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from typing import Any, Iterator
from urllib.parse import urlsplit

NS = time.perf_counter_ns


class Stats:
    """Latencies (ns) and error counts of one run."""

    def __init__(self) -> None:
        self.latencies: list[int] = []
        self.non200 = 0
        self.errors = 0
        self.statuses: dict[int, int] = {}


class Connection(asyncio.Protocol):
    """One keep-alive connection sending requests back to back until the deadline."""

    def __init__(self, requests: Iterator[bytes], stats: Stats, deadline: int, done: asyncio.Future[None]) -> None:
        self.requests = requests
        self.stats = stats
        self.deadline = deadline
        self.done = done
        self.transport: Any = None
        self.buffer = bytearray()
        self.started = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        request = next(self.requests)
        self.started = NS()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            parsed = self._parse()
            if parsed is None:
                return
            status, used = parsed
            del self.buffer[:used]
            now = NS()
            self.stats.latencies.append(now - self.started)
            self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1
            if status != 200:
                self.stats.non200 += 1
            if now >= self.deadline:
                self.transport.close()
                return
            self.send()

    def _parse(self) -> tuple[int, int] | None:
        """Return (status, bytes used) of one complete answer at the start of the buffer."""
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).lower()
        status = int(head[9:12])
        body_start = end + 4
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17:stop if stop >= 0 else len(head)])
            total = body_start + length
            return (status, total) if len(buf) >= total else None
        if b"\r\ntransfer-encoding: chunked" in head:
            pos = body_start
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
                if size == 0:
                    trailer_end = buf.find(b"\r\n\r\n", line_end)
                    if trailer_end < 0:
                        return None
                    return status, trailer_end + 4
                pos = line_end + 2 + size + 2
                if pos > len(buf):
                    return None
        return status, body_start  # no body (204, 304)

    def connection_lost(self, exc: Exception | None) -> None:
        if NS() < self.deadline:
            self.stats.errors += 1
        if not self.done.done():
            self.done.set_result(None)


def build_requests(url: str, bodies: list[bytes]) -> tuple[str, int, list[bytes]]:
    """Return host, port and the raw request bytes to send in turn."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    common = f"Host: {host}:{port}\r\nUser-Agent: cubed-bench\r\nAccept: application/json\r\n"
    if not bodies:
        return host, port, [f"GET {target} HTTP/1.1\r\n{common}\r\n".encode()]
    return host, port, [
        f"POST {target} HTTP/1.1\r\n{common}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        .encode() + body
        for body in bodies
    ]


async def drive(url: str, bodies: list[bytes], connections: int, duration: float) -> tuple[Stats, float, float]:
    """Run the load; return the stats, the wall time and the client CPU seconds."""
    host, port, requests = build_requests(url, bodies)
    # One rotation shared by all connections (as wrk.lua's per-thread counter): the requests in
    # flight at once are consecutive bodies, all distinct while there are fewer than bodies.
    rotation = itertools.cycle(requests)
    loop = asyncio.get_running_loop()
    stats = Stats()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    deadline = NS() + int(duration * 1e9)
    waits = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        try:
            await loop.create_connection(
                lambda d=done: Connection(rotation, stats, deadline, d), host, port)
        except OSError:
            stats.errors += 1
            done.set_result(None)
        waits.append(done)
    await asyncio.gather(*waits)
    return stats, time.perf_counter() - wall0, time.process_time() - cpu0


def percentile(ordered: list[int], fraction: float) -> float:
    """Return the ``fraction`` percentile of sorted ns values, in ms (nearest rank)."""
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index] / 1e6


def result_line(stats: Stats, wall: float, cpu: float) -> tuple[str, dict[str, Any]]:
    """Return the RESULT line and its figures."""
    ordered = sorted(stats.latencies)
    figures = {
        "requests": len(ordered), "duration_s": wall, "rps": len(ordered) / wall if wall else 0.0,
        "p50_ms": percentile(ordered, 0.50), "p90_ms": percentile(ordered, 0.90),
        "p99_ms": percentile(ordered, 0.99), "max_ms": ordered[-1] / 1e6 if ordered else float("nan"),
        "errors": stats.errors, "non200": stats.non200, "client_cpu": 100 * cpu / wall if wall else 0.0,
        "statuses": stats.statuses,
    }
    line = ("RESULT requests={requests} duration_s={duration_s:.3f} rps={rps:.1f} p50_ms={p50_ms:.3f} "
            "p90_ms={p90_ms:.3f} p99_ms={p99_ms:.3f} max_ms={max_ms:.3f} errors={errors} non200={non200} "
            "client_cpu={client_cpu:.0f}%").format(**figures)
    return line, figures


def run(args: argparse.Namespace) -> None:
    """The ``run`` command."""
    bodies: list[bytes] = []
    if args.bodies:
        with open(args.bodies, "rb") as source:
            bodies = [line.strip() for line in source if line.strip()]
    stats, wall, cpu = asyncio.run(drive(args.url, bodies, args.connections, args.duration))
    line, figures = result_line(stats, wall, cpu)
    print(line, flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(figures, out)


# -- selftest: a trivial server to show the client's own ceiling ------------------------------
_FIXED_BODY = json.dumps({"query": {}, "data": [{"x": "y" * 40}] * 12}).encode()
_FIXED_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"%x\r\n" % len(_FIXED_BODY) + _FIXED_BODY + b"\r\n0\r\n\r\n")


class _FixedServer(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15:].split(b"\r\n")[0])
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[:end + 4 + length]
            self.transport.write(_FIXED_ANSWER)


def serve_fixed(port: int) -> None:
    """Serve the fixed answer on 127.0.0.1:port until killed."""
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_FixedServer, "127.0.0.1", port)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def selftest(args: argparse.Namespace) -> None:
    """The ``selftest`` command."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cpus = sorted(os.sched_getaffinity(0))
    child = subprocess.Popen([sys.executable, __file__, "_serve", str(port)], stdout=subprocess.PIPE)
    try:
        if len(cpus) > 1:
            os.sched_setaffinity(child.pid, {cpus[0]})
            os.sched_setaffinity(0, {cpus[1]})
        assert child.stdout is not None
        child.stdout.readline()
        body = b'{"query":{"measures":["Orders.count"],"dimensions":["Orders.status"]}}'
        stats, wall, cpu = asyncio.run(drive(f"http://127.0.0.1:{port}/", [body], args.connections, args.duration))
        line, _figures = result_line(stats, wall, cpu)
        print(line)
    finally:
        child.terminate()
        child.wait()


def main() -> None:
    """Parse the command line and run the command."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="load a URL")
    run_parser.add_argument("--url", required=True)
    run_parser.add_argument("--bodies", help="file of JSON bodies, one per line (POST); none: GET")
    run_parser.add_argument("--connections", "-c", type=int, default=1)
    run_parser.add_argument("--duration", "-d", type=float, default=10.0)
    run_parser.add_argument("--json", help="also write the figures to this file")
    test_parser = commands.add_parser("selftest", help="the client's own ceiling against a trivial server")
    test_parser.add_argument("--connections", "-c", type=int, default=16)
    test_parser.add_argument("--duration", "-d", type=float, default=5.0)
    serve_parser = commands.add_parser("_serve")
    serve_parser.add_argument("port", type=int)
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    elif args.command == "selftest":
        selftest(args)
    else:
        serve_fixed(args.port)


if __name__ == "__main__":
    main()
