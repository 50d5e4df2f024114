"""The ingest benchmark: bare Starlette, the bridge and SiteGPT's Flask example, back to back."""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import Load, LoadResult, run_load
from bench.servers import (
    TOKEN,
    Server,
    bridge_env,
    bridge_settings,
    free_port,
    python_command,
    start,
)
from tests.fake_slack import FakeSlack
from tests.postgres import created_database

PATH = "/webhooks/messages"
WARM_UP_SECONDS = 1.0
SETTLE_SECONDS = 2.0
MAX_SOAK_CHUNK_SECONDS = 30.0


@dataclass(frozen=True)
class IngestOptions:
    seconds: float
    connections: int
    threads: int
    events: int
    generator: str
    slack: str  # "fake": a healthy fake Slack with Slack's own pacing; "dry-run": no token
    servers: tuple[str, ...] = ("bare", "durable", "bridge", "flask", "postgres", "postgres2")
    postgres: str = ""  # the server to make a fresh database on, for the PostgreSQL rows


@dataclass(frozen=True)
class Measured:
    """One server under the same load: the numbers and its memory right after."""

    label: str
    result: LoadResult
    rss_mb: float
    warm_up_requests: int


@dataclass
class IngestReport:
    rows: list[Measured] = field(default_factory=list)
    ready_seconds: float = 0.0
    idle_rss_mb: float = 0.0
    soak_events: int = 0
    soak_rss_mb: float = 0.0
    native: list[str] = field(default_factory=list)

    def row(self, label: str) -> Measured | None:
        return next((row for row in self.rows if row.label == label), None)


BASELINE = "bare Starlette endpoint"
DURABLE = "Starlette + group commit"
BRIDGE = "sitegpt-bridge"
FLASK = "SiteGPT Flask example"
POSTGRES = "bridge, PostgreSQL x1"
POSTGRES_PAIR = "bridge, PostgreSQL x2 (RR)"
# The bridge's app on other HTTP servers (bench/other_servers.py), by --servers name.
OTHER_SERVERS = {"uvicorn-h11": "bridge on uvicorn h11", "hypercorn": "bridge on Hypercorn",
                 "granian": "bridge on Granian"}


def run_ingest(options: IngestOptions) -> IngestReport:
    report = IngestReport()
    with tempfile.TemporaryDirectory(prefix="bridge-bench-") as folder:
        work = Path(folder)
        if "bare" in options.servers:
            with _serving(_start_baseline(work)) as server:
                report.rows.append(_measure(BASELINE, server, options))
        if "durable" in options.servers:
            with _serving(_start_durable(work)) as server:
                report.rows.append(_measure(DURABLE, server, options))
        if "bridge" in options.servers:
            _bench_bridge(work, options, report)
        for name, label in OTHER_SERVERS.items():
            if name in options.servers:
                _bench_other(work, options, report, name, label)
        if "flask" in options.servers:
            with _serving(_start_flask(work)) as server:
                report.rows.append(_measure(FLASK, server, options))
        for name, label, count in (("postgres", POSTGRES, 1), ("postgres2", POSTGRES_PAIR, 2)):
            if name in options.servers and options.postgres:
                _bench_replicas(work / name, options, report, label, count)
    return report


def _bench_replicas(work: Path, options: IngestOptions, report: IngestReport, label: str,
                    count: int) -> None:
    """`count` bridges on one fresh PostgreSQL database, the load spread over them in turn."""
    work.mkdir()
    with created_database(options.postgres, "bridge_bench_") as url, FakeSlack() as slack, \
            contextlib.ExitStack() as replicas:
        servers = [replicas.enter_context(_serving(_start_replica(work / f"replica-{n}", slack,
                                                                  options, url)))
                   for n in range(count)]
        time.sleep(SETTLE_SECONDS)
        warm_up = _load_spread(servers, options, WARM_UP_SECONDS)
        result = _load_spread(servers, options, options.seconds)
        rss = sum(server.rss_mb() for server in servers)
        report.rows.append(Measured(label, result, rss, warm_up.ok))


def _load_spread(servers: list[Server], options: IngestOptions, seconds: float) -> LoadResult:
    load = Load(url=servers[0].url + PATH, token=TOKEN, run=uuid.uuid4().hex[:8],
                seconds=seconds, connections=options.connections, threads=options.threads,
                also=tuple(server.url + PATH for server in servers[1:]))
    return run_load(load, options.generator)


def _start_replica(folder: Path, slack: FakeSlack, options: IngestOptions,
                   store_url: str) -> Server:
    folder.mkdir()
    port = free_port()
    slack_url = slack.api_url if options.slack == "fake" else None
    settings = bridge_settings(folder, port, slack_url, store_url=store_url)
    command = python_command("-m", "bridge", "serve", "--config", str(settings))
    return start(BRIDGE, command, port, folder / "bridge.log", "/readyz", bridge_env(), 200)


def _bench_bridge(work: Path, options: IngestOptions, report: IngestReport) -> None:
    with FakeSlack() as slack, _serving(_start_bridge(work, slack, options)) as bridge:
        report.ready_seconds = bridge.ready_seconds
        report.native = bridge.native
        time.sleep(SETTLE_SECONDS)
        report.idle_rss_mb = bridge.rss_mb()
        measured = _measure(BRIDGE, bridge, options)
        report.rows.append(measured)
        report.soak_events = _soak(
            bridge, options, measured.result.ok + measured.warm_up_requests)
        report.soak_rss_mb = bridge.rss_mb()


def _bench_other(work: Path, options: IngestOptions, report: IngestReport, name: str,
                 label: str) -> None:
    folder = work / name
    folder.mkdir()
    port = free_port()
    with FakeSlack() as slack:
        settings = bridge_settings(folder, port, slack.api_url if options.slack == "fake" else None)
        command = python_command("-m", "bench.other_servers", "--server", name,
                                 "--config", str(settings))
        with _serving(start(label, command, port, folder / "bridge.log", "/readyz",
                            bridge_env(), 200)) as server:
            time.sleep(SETTLE_SECONDS)
            report.rows.append(_measure(label, server, options))


@contextlib.contextmanager
def _serving(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


def _measure(label: str, server: Server, options: IngestOptions) -> Measured:
    warm_up = _load(server, options, WARM_UP_SECONDS)
    result = _load(server, options, options.seconds)
    return Measured(label, result, server.rss_mb(), warm_up.ok)


def _load(server: Server, options: IngestOptions, seconds: float) -> LoadResult:
    load = Load(url=server.url + PATH, token=TOKEN, run=uuid.uuid4().hex[:8], seconds=seconds,
                connections=options.connections, threads=options.threads)
    return run_load(load, options.generator)


def _soak(bridge: Server, options: IngestOptions, sent: int) -> int:
    """Keep the burst going until the bridge has taken `options.events` events in all."""
    rate = max(sent / options.seconds, 100.0)
    while sent < options.events:
        seconds = min(max((options.events - sent) / rate * 1.05, 1.0), MAX_SOAK_CHUNK_SECONDS)
        result = _load(bridge, options, seconds)
        sent += result.ok
        rate = max(result.per_second, 100.0)
    return sent


def _start_baseline(work: Path) -> Server:
    port = free_port()
    return start(BASELINE, python_command("-m", "bench.baseline", "--port", str(port)), port,
                 work / "baseline.log", PATH)


def _start_durable(work: Path) -> Server:
    port = free_port()
    command = python_command("-m", "bench.durable", "--port", str(port),
                             "--db", str(work / "durable.db"))
    return start(DURABLE, command, port, work / "durable.log", PATH)


def _start_bridge(work: Path, slack: FakeSlack, options: IngestOptions) -> Server:
    port = free_port()
    settings = bridge_settings(work, port, slack.api_url if options.slack == "fake" else None)
    command = python_command("-m", "bridge", "serve", "--config", str(settings))
    return start(BRIDGE, command, port, work / "bridge.log", "/readyz", bridge_env(), 200)


def _start_flask(work: Path) -> Server:
    port = free_port()
    # The example's own `app.run(...)`, Flask's development server, on a free port.
    code = f"from bench.sitegpt_flask_example import app; app.run(port={port})"
    env = bridge_env() | {"SITEGPT_MESSAGE_TOKEN": TOKEN}
    return start(FLASK, python_command("-c", code), port, work / "flask.log", PATH, env)
