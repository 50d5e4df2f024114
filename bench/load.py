"""Load generators: wrk with bench/webhook.lua when installed, else a Python asyncio client."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.bodies import TEMPLATE, message_body

LUA_SCRIPT = Path(__file__).with_name("webhook.lua")


@dataclass(frozen=True)
class Load:
    """What to send: where, with which token, how hard and for how long."""

    url: str
    token: str
    run: str
    seconds: float
    connections: int = 32
    threads: int = 2
    also: tuple[str, ...] = ()  # more replicas: connections are spread over all, in turn

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.also)


@dataclass(frozen=True)
class LoadResult:
    generator: str
    requests: int
    non_2xx: int
    socket_errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def choose_generator(preferred: str = "auto") -> str:
    """"wrk" when asked for or found on PATH, else "python"."""
    if preferred == "wrk" and not shutil.which("wrk"):
        raise SystemExit("bench: --load wrk, but wrk is not installed (apt-get install wrk)")
    if preferred == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    return preferred


def run_load(load: Load, generator: str) -> LoadResult:
    if generator == "wrk" and load.also:
        return _wrk_spread(load)
    if generator == "wrk":
        return _wrk(load)
    with asyncio.Runner(loop_factory=_fastest_loop()) as runner:
        return runner.run(_drive(load))


def _wrk(load: Load) -> LoadResult:
    command = [
        "wrk", f"-t{load.threads}", f"-c{load.connections}", f"-d{max(1, round(load.seconds))}s",
        "--timeout", "10s", "-s", str(LUA_SCRIPT), load.url, "--", load.token, load.run, TEMPLATE,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next((line for line in output.splitlines() if line.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    return LoadResult(generator="wrk", **json.loads(line.removeprefix("BENCH ")))


def _wrk_spread(load: Load) -> LoadResult:
    """One wrk per replica at once, the connections shared out; latencies: the worst of them."""
    share = max(load.connections // len(load.urls), 1)
    loads = [Load(url, load.token, f"{load.run}{n}", load.seconds, share, load.threads)
             for n, url in enumerate(load.urls)]
    with ThreadPoolExecutor(len(loads)) as pool:
        results = list(pool.map(_wrk, loads))
    return LoadResult(
        generator="wrk", requests=sum(r.requests for r in results),
        non_2xx=sum(r.non_2xx for r in results),
        socket_errors=sum(r.socket_errors for r in results),
        seconds=max(r.seconds for r in results), p50_ms=max(r.p50_ms for r in results),
        p99_ms=max(r.p99_ms for r in results), max_ms=max(r.max_ms for r in results))


class _Tally:
    """What the Python client's connections saw, shared between them."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.non_2xx = 0
        self.socket_errors = 0


def _fastest_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: the client should be the bottleneck as little as it can."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def request_head(url: str, token: str) -> tuple[str, int, str]:
    """Host, port, and the request head for a webhook POST, with %d for Content-Length."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nX-WEBHOOK-TOKEN: {token}\r\n"
            "Content-Length: %d\r\n\r\n")
    return host, port, head


async def _drive(load: Load) -> LoadResult:
    targets = [request_head(url, load.token) for url in load.urls]
    serials = itertools.count()
    tally = _Tally()
    started = time.perf_counter()
    deadline = started + load.seconds
    await asyncio.gather(*(
        _connection(*targets[n % len(targets)], load.run, serials, deadline, tally)
        for n in range(load.connections)))
    elapsed = time.perf_counter() - started
    latencies = sorted(tally.latencies) or [0.0]
    return LoadResult(
        generator="python asyncio client", requests=len(tally.latencies),
        non_2xx=tally.non_2xx, socket_errors=tally.socket_errors, seconds=elapsed,
        p50_ms=percentile(latencies, 50) * 1e3, p99_ms=percentile(latencies, 99) * 1e3,
        max_ms=latencies[-1] * 1e3)


async def _connection(host: str, port: int, head: str, run: str,
                      serials: itertools.count[int], deadline: float, tally: _Tally) -> None:
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while time.perf_counter() < deadline:
        try:
            if streams is None:
                streams = await asyncio.open_connection(host, port)
            reader, writer = streams
            body = message_body(run, next(serials))
            sent = time.perf_counter()
            writer.write((head % len(body)).encode() + body)
            status, keep_alive = await read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            tally.socket_errors += 1
            streams = _close(streams)
            continue
        tally.latencies.append(time.perf_counter() - sent)
        tally.non_2xx += not 200 <= status < 300
        if not keep_alive:
            streams = _close(streams)
    _close(streams)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """The status and whether the connection stays open; the body is read and dropped."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    version, status = head[0].split(" ", 2)[:2]
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
    await reader.readexactly(int(headers.get("content-length", "0")))
    connection = headers.get("connection", "")
    keep_alive = connection == "keep-alive" or (version == "HTTP/1.1" and connection != "close")
    return int(status), keep_alive


def _close(
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
) -> None:
    if streams is not None:
        streams[1].close()


def percentile(ordered: list[float], percent: float) -> float:
    index = min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))
    return ordered[index]
