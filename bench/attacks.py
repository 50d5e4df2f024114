"""What each HTTP server does with the requests that try to exhaust a server's memory or sockets.

`python -m bench.attacks --server bridge` (or uvicorn-h11, hypercorn, granian: see
bench/other_servers.py) starts a fresh bridge and tries, on 127.0.0.1 only: a huge request
head, a huge chunked trailer on several connections at once (the RSS it costs, and how long a
valid webhook waits meanwhile), a head and a body sent a byte at a time, a connection that says
nothing, and a keep-alive connection that sends bare CRLFs after its request.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.servers import TOKEN, Server, bridge_env, bridge_settings, free_port, python_command
from bench.servers import start as start_server

HEAD = b"POST /webhooks/messages HTTP/1.1\r\nHost: bridge\r\nX-WEBHOOK-TOKEN: %s\r\n" % (
    TOKEN.encode())
CHUNK = b"a" * 65536
MIB = 1024 * 1024
WEBHOOK = {"event": "ADD_MESSAGE", "data": {"chatbotId": "c", "threadId": "t",
                                           "messages": [{"role": "user", "content": "hi"}]}}


@dataclass(frozen=True)
class Limits:
    request_timeout: float
    header_bytes: int = 16384


@dataclass
class Outcome:
    """One attack: what the server took, what it answered, how long the connection lived."""

    attack: str
    accepted_mib: float
    answer: str
    seconds: float
    rss_growth_mb: float = 0.0
    webhook_ms: float = 0.0


def status_of(said: bytes) -> str:
    return said.split(b"\r\n", 1)[0][9:12].decode() if said.startswith(b"HTTP/") else "none"


def first_words(sock: socket.socket, give_up: float) -> bytes:
    """The start of what the server says: b"" if it closes or keeps silent for `give_up` s."""
    sock.settimeout(give_up)
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        return sock.recv(65536)
    return b""


def flood(port: int, start: bytes, size: int, give_up: float) -> tuple[int, bytes, float]:
    """Send `start` then `size` bytes of padding; bytes taken, answer, seconds connected."""
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=give_up) as sock:
        sent = 0
        try:
            sock.sendall(start)
            while sent < size:
                sock.sendall(CHUNK)
                sent += len(CHUNK)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        said = first_words(sock, give_up)
        return sent, said, time.monotonic() - began


def dribble(port: int, start: bytes, byte: bytes, every: float, give_up: float,
            ) -> tuple[bytes, float, bool]:
    """Send `start`, then `byte` every `every` s; the answer, seconds connected, closed."""
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=give_up) as sock:
        sock.sendall(start)
        if start.endswith(b"\r\n\r\n"):  # a whole request first: its answer, then the dribble
            read_healthz(sock)
            began = time.monotonic()
        sock.settimeout(every)
        while time.monotonic() - began < give_up:
            try:
                if byte:
                    sock.send(byte)
                said = sock.recv(65536)
                return said, time.monotonic() - began, True
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return b"", time.monotonic() - began, True
        return b"", time.monotonic() - began, False


def read_healthz(sock: socket.socket) -> None:
    """The whole of /healthz's answer, which ends with its body "ok", however many reads."""
    said = b""
    while not said.endswith(b"\r\n\r\nok"):
        said += sock.recv(65536)


class RssPeak:
    """The highest RSS of a process while the block runs, sampled every 20 ms."""

    def __init__(self, server: Server) -> None:
        self.server, self.before, self.peak = server, server.rss_mb(), server.rss_mb()
        self._done = threading.Event()

    def __enter__(self) -> RssPeak:
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, self.server.rss_mb())


def huge_head(server: Server, limits: Limits) -> Outcome:
    sent, said, seconds = flood(server.port, HEAD + b"X-Padding: ", 32 * MIB,
                                limits.request_timeout * 3)
    return Outcome("32 MiB header", sent / MIB, status_of(said), seconds)


def huge_trailers(server: Server, limits: Limits, connections: int = 8,
                  size: int = 64 * MIB) -> Outcome:
    start = HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: "
    with RssPeak(server) as rss, ThreadPoolExecutor(connections + 1) as pool:
        floods = [pool.submit(flood, server.port, start, size, limits.request_timeout * 3)
                  for _ in range(connections)]
        time.sleep(0.2)
        webhook = pool.submit(webhook_ms, server)
        results = [future.result() for future in floods]
    answers = sorted({status_of(said) for _, said, _ in results})
    return Outcome(f"{connections} x {size // MIB} MiB chunked trailer",
                   max(sent for sent, _, _ in results) / MIB, ",".join(answers),
                   max(seconds for _, _, seconds in results), rss.peak - rss.before,
                   webhook.result())


def webhook_ms(server: Server) -> float:
    began = time.monotonic()
    response = httpx.post(f"{server.url}/webhooks/messages", json=WEBHOOK,
                          headers={"X-WEBHOOK-TOKEN": TOKEN}, timeout=60)
    return (time.monotonic() - began) * 1000 if response.status_code == 200 else -1.0


def dribbled(name: str, start: bytes, byte: bytes, every: float,
             ) -> Callable[[Server, Limits], Outcome]:
    def attack(server: Server, limits: Limits) -> Outcome:
        said, seconds, closed = dribble(server.port, start, byte, every,
                                        limits.request_timeout * 3 + 6)
        return Outcome(name, 0.0, status_of(said) if closed else "still open", seconds)
    return attack


ATTACKS: tuple[Callable[[Server, Limits], Outcome], ...] = (
    huge_head,
    huge_trailers,
    dribbled("head, a byte every 0.1 s", HEAD + b"X-Slow: ", b"a", 0.1),
    dribbled("body, a byte every 0.1 s", HEAD + b"Content-Length: 500\r\n\r\n{", b"a", 0.1),
    dribbled("connect, say nothing", b"", b"", 0.1),
    dribbled("keep-alive, then CRLF every 0.5 s",
             b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n", b"\r\n", 0.5),
)


def start(name: str, folder: Path, limits: Limits) -> Server:
    port = free_port()
    settings = bridge_settings(folder, port, None)
    limits_lines = (f'request_timeout = "{limits.request_timeout:g}s"\n'
                    f"max_header_bytes = {limits.header_bytes}\n")
    text = settings.read_text()
    settings.write_text(text.replace(f"port = {port}\n", f"port = {port}\n{limits_lines}", 1))
    command = (python_command("-m", "bridge", "serve", "--no-worker", "--config", str(settings))
               if name == "bridge" else
               python_command("-m", "bench.other_servers", "--server", name,
                              "--config", str(settings)))
    return start_server(name, command, port, folder / f"{name}.log", "/healthz", bridge_env())


def run(name: str, limits: Limits) -> Iterator[Outcome]:
    with tempfile.TemporaryDirectory(prefix="bridge-attacks-") as folder:
        server = start(name, Path(folder), limits)
        try:
            for attack in ATTACKS:
                yield attack(server, limits)
        finally:
            server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__)
    parser.add_argument("--server", default="bridge",
                        help="bridge (`serve`), uvicorn-h11, hypercorn or granian")
    parser.add_argument("--request-timeout", type=float, default=2.0,
                        help="[server] request_timeout in s (default 2, to keep runs short)")
    args = parser.parse_args(argv)
    limits = Limits(args.request_timeout)
    print(f"{args.server}, request_timeout {limits.request_timeout:g} s, "
          f"max_header_bytes {limits.header_bytes}")
    print(f"{'attack':<36}{'taken MiB':>10}{'answer':>12}{'open s':>8}{'RSS +MB':>9}"
          f"{'webhook ms':>11}")
    for outcome in run(args.server, limits):
        print(f"{outcome.attack:<36}{outcome.accepted_mib:>10.1f}{outcome.answer:>12}"
              f"{outcome.seconds:>8.1f}{outcome.rss_growth_mb:>9.0f}{outcome.webhook_ms:>11.0f}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
