"""`serve` on the open internet: bounded request heads, slow clients cut off, signals stop cleanly.

Each test runs the real `sitegpt-bridge serve` as a process on loopback and talks raw HTTP.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bridge.samples import load_sample
from tests.servers import BridgeProcess
from tests.settings_files import TOKENS

HEAD = b"POST /webhooks/messages HTTP/1.1\r\nHost: bridge\r\n"
GIVE_UP = 30.0  # seconds a test waits for what the bridge must do within 1 s
MIB = 1024 * 1024


@pytest.fixture
def bridge(make_settings, tmp_path: Path) -> Iterator[BridgeProcess]:
    make_settings({"server": {"request_timeout": "1s", "max_header_bytes": 16384}})
    with BridgeProcess(tmp_path / "settings.toml", cwd=tmp_path, args=["--no-worker"]) as running:
        yield running


def connect(bridge: BridgeProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", bridge.port), timeout=GIVE_UP)


def answer(sock: socket.socket) -> bytes:
    """What the bridge says before it closes the connection (b"" if it closed in silence)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received


def rss_kib(bridge: BridgeProcess) -> int:
    assert bridge.process is not None
    status = Path(f"/proc/{bridge.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def webhook_still_answers(bridge: BridgeProcess) -> bool:
    response = httpx.post(f"{bridge.url}/webhooks/messages", json=load_sample("message-visitor"),
                          headers={"X-WEBHOOK-TOKEN": TOKENS["messages"]}, timeout=GIVE_UP)
    return response.status_code == 200


def send_huge(bridge: BridgeProcess, start: bytes, size: int) -> tuple[int, bytes]:
    """Send `start` and `size` bytes of padding; how much went out before the bridge hung up,
    its answer."""
    sock = connect(bridge)
    sent = 0
    with sock:
        try:
            sock.sendall(start)
            chunk = b"a" * 65536
            while sent < size:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return sent, answer(sock)


def assert_refused_with_431(results: list[tuple[int, bytes]], size: int) -> None:
    """Each connection was cut off long before `size` bytes; the bridge said 431 (a client
    still sending may see the connection reset before it reads the answer)."""
    for sent, said in results:
        assert sent < size, f"the bridge read {sent / MIB:.0f} MiB of a {size / MIB:.0f} MiB send"
        assert said == b"" or said.startswith(b"HTTP/1.1 431 "), said[:100]
    assert any(said.startswith(b"HTTP/1.1 431 ") for _, said in results)


def test_a_huge_header_gets_431_and_costs_no_memory(bridge):
    size = 32 * MIB
    before = rss_kib(bridge)
    results = [send_huge(bridge, HEAD + b"X-Padding: ", size) for _ in range(8)]
    grown_mib = (rss_kib(bridge) - before) / 1024
    assert_refused_with_431(results, size)
    assert grown_mib < 32, f"8 huge headers grew the bridge by {grown_mib:.0f} MiB"
    assert webhook_still_answers(bridge)


def test_a_huge_chunked_trailer_gets_431_before_16_mib_are_read(bridge):
    # Kernel buffers on loopback take a few MiB the bridge never reads; 16 MiB is far beyond.
    start = (HEAD + b"X-WEBHOOK-TOKEN: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"2\r\n{}\r\n0\r\nX-Trailer: " % TOKENS["messages"].encode())
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: send_huge(bridge, start, 64 * MIB), range(4)))
    assert_refused_with_431(results, 16 * MIB)
    assert webhook_still_answers(bridge)


@pytest.mark.parametrize("chunk_size", [1024, 16384])
def test_a_chunked_webhook_with_trailers_is_served(bridge, chunk_size):
    event = load_sample("message-visitor")
    event["data"]["question"] = "x" * 100_000  # the body itself is not bounded by the head limit
    body = json.dumps(event).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece)
                      for piece in (body[at:at + chunk_size]
                                    for at in range(0, len(body), chunk_size)))
    with connect(bridge) as sock:
        sock.sendall(HEAD + b"X-WEBHOOK-TOKEN: %s\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" % TOKENS["messages"].encode()
                     + chunks + b"0\r\nX-Trailer: " + b"a" * 8000 + b"\r\n\r\n")
        said = sock.recv(65536)
    assert said.startswith(b"HTTP/1.1 200 "), said[:200]


def test_a_head_just_under_the_limit_is_served(bridge):
    body = b'{"event": "ADD_MESSAGE", "data": {"chatbotId": "c", "threadId": "t"}}'
    head = (HEAD + b"X-WEBHOOK-TOKEN: " + TOKENS["messages"].encode() + b"\r\n"
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body))
    padding = b"X-Padding: " + b"a" * (16384 - len(head) - len(b"X-Padding: \r\n\r\n") - 64)
    with connect(bridge) as sock:
        sock.sendall(head + padding + b"\r\n\r\n" + body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def dribble(sock: socket.socket, byte: bytes = b"a") -> bytes:
    """Send `byte` every 0.1 s until the bridge answers or hangs up; what it said."""
    sock.settimeout(0.1)
    deadline = time.monotonic() + GIVE_UP
    while time.monotonic() < deadline:
        try:
            sock.send(byte)
            return sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return b""
    pytest.fail(f"still connected after dribbling for {GIVE_UP:g} s")


@pytest.mark.parametrize("start", [
    HEAD + b"X-Slow: ",
    HEAD + b"X-WEBHOOK-TOKEN: %s\r\nContent-Length: 500\r\n\r\n{" % TOKENS["messages"].encode(),
], ids=["headers", "body"])
def test_a_client_that_dribbles_is_cut_off_with_408(bridge, start):
    with connect(bridge) as sock:
        sock.sendall(start)
        said = dribble(sock)
    assert said.startswith(b"HTTP/1.1 408 "), said[:100]
    assert webhook_still_answers(bridge)


def read_response(sock: socket.socket) -> bytes:
    """One whole answer with a Content-Length, however many reads it takes."""
    said = b""
    while b"\r\n\r\n" not in said:
        said += sock.recv(65536)
    head, _, body = said.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                  if line.startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_bare_crlfs_after_an_answer_do_not_keep_a_connection_open(bridge):
    with connect(bridge) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        said = dribble(sock, b"\r\n")  # begins no request, yet is a request's first bytes
    assert said.startswith(b"HTTP/1.1 408 "), said[:100]
    assert webhook_still_answers(bridge)


def test_a_connection_that_says_nothing_is_closed(bridge):
    with connect(bridge) as sock:
        said = answer(sock)  # returns once the bridge closes; GIVE_UP bounds the wait
    assert said.startswith(b"HTTP/1.1 408 "), said[:100]


def test_a_flood_of_malformed_requests_is_refused_in_one_log_line(bridge):
    for _ in range(50):
        with connect(bridge) as sock:
            sock.sendall(b"GARBAGE\x00 / HTTP/1.1\r\n\r\n")
            assert answer(sock).startswith(b"HTTP/1.1 400 ")
    for _ in range(50):
        with connect(bridge) as sock:  # an upgrade is answered as plain HTTP, unlogged
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\n"
                         b"Upgrade: websocket\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    assert webhook_still_answers(bridge)
    deadline = time.monotonic() + GIVE_UP
    while "accepted event" not in bridge.log and time.monotonic() < deadline:
        time.sleep(0.05)  # the log is written by a thread of its own
    lines = [line for line in bridge.log.splitlines()  # 400 as a word: not a time's .400Z
             if re.search(r"\b400\b", line) or "invalid" in line.lower()
             or "upgrade" in line.lower()]
    assert len(lines) == 1 and "connection rejected (400 bad_request)" in lines[0], lines[:5]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_drains_writes_every_log_line_and_exits_0(make_settings, tmp_path,
                                                                 signum):
    make_settings()
    with BridgeProcess(tmp_path / "settings.toml", cwd=tmp_path) as running:
        assert webhook_still_answers(running)
        assert running.process is not None
        running.process.send_signal(signum)
        code = running.process.wait(GIVE_UP)
        log = running.log
    assert code == 0, log[-2000:]
    assert "webhook messages: accepted event 1" in log
    assert json.loads(log.rstrip().splitlines()[-1])["message"] == "sitegpt-bridge stopped"


def test_a_stop_sums_up_the_refusals_of_the_interval_still_open(make_settings, tmp_path):
    make_settings()
    with BridgeProcess(tmp_path / "settings.toml", cwd=tmp_path) as running:
        for _ in range(20):
            with connect(running) as sock:
                sock.sendall(HEAD + b"Connection: close\r\nX-WEBHOOK-TOKEN: wrong\r\n"
                             b"Content-Length: 2\r\n\r\n{}")
                assert answer(sock).startswith(b"HTTP/1.1 401 ")
        assert running.process is not None
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(GIVE_UP) == 0
        log = running.log
    assert "webhook messages rejected (401 unauthorized) 19 more times in the last" in log
