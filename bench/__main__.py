"""`python -m bench`: ingest speed, memory, start-up, delivery latency, outage catch-up, Jira
comment conversion, Mattermost beside Slack, replies from Mattermost and the console's pages."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from bench.backlog import Backlog, BacklogOptions, run_backlog
from bench.console import print_console, run_console
from bench.delivery import DeliveryOptions, DeliveryReport, run_delivery
from bench.ingest import BASELINE, BRIDGE, FLASK, IngestOptions, IngestReport, run_ingest
from bench.load import LoadResult, choose_generator
from bench.markup import print_markup, run_markup
from bench.mattermost import ChatLatency, run_mattermost
from bench.mattermost_replies import MEMBERS, ReplyLatency, run_mattermost_replies
from tests.postgres import SERVER, unreachable_because


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="load duration per server (default 10)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--events", type=int, default=100_000,
                        help="events sent to the bridge before reading its RSS (default 100000)")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk when installed (auto), or the Python client")
    parser.add_argument("--slack", choices=("fake", "dry-run"), default="fake",
                        help="during ingest: a healthy fake Slack with Slack's pacing, or none")
    parser.add_argument("--servers", default="bare,durable,bridge,flask,postgres,postgres2",
                        help="which of bare,durable,bridge,flask,postgres,postgres2 to load "
                             "(default all; postgres2: two replicas, the load spread in turn); "
                             "also uvicorn-h11, hypercorn, granian: the bridge on that server "
                             "(see bench/other_servers.py)")
    parser.add_argument("--postgres", default=SERVER, metavar="URL",
                        help="a PostgreSQL server to make a fresh database on for the "
                             "PostgreSQL runs, or '' to skip them (default $TEST_POSTGRES_URL, "
                             "else 127.0.0.1:5432 as postgres)")
    parser.add_argument("--only", choices=("ingest", "delivery", "backlog", "markup",
                                           "mattermost", "mattermost-replies", "console"),
                        help="run only the ingest, delivery, outage catch-up, Jira comment "
                             "conversion, Mattermost, replies from Mattermost or console pages "
                             "benchmark")
    parser.add_argument("--replies", type=int, default=200,
                        help="replies written in Mattermost, one at a time (default 200)")
    parser.add_argument("--deliveries", type=int, default=100_000,
                        help="deliveries in the store the console's pages read (default 100000)")
    parser.add_argument("--burst", type=int, default=200,
                        help="messages in the one-conversation burst (default 200)")
    parser.add_argument("--burst-rate", type=float, default=20.0,
                        help="posts/s per channel allowed by the fake Slack and set as "
                             "[slack] per_second in that run (Slack: 1; default 20)")
    return parser.parse_args(argv)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip()
                  for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{os.cpu_count()} cores, {model}; load average {load}"


def print_ingest(report: IngestReport, options: IngestOptions) -> None:
    bare = report.row(BASELINE)
    print(f"\nIngest: {options.connections} connections, {options.seconds:g} s each, "
          f"unique ~500-byte ADD_MESSAGE bodies, load from {report.rows[0].result.generator}")
    print(f"{'server':<26}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'vs bare':>9}{'errors':>8}{'RSS MB':>8}")
    for row in report.rows:
        result = row.result
        ratio = f"{result.per_second / bare.result.per_second:.0%}" if bare else "-"
        print(f"{row.label:<26}{result.per_second:>9,.0f}{result.p50_ms:>9.1f}"
              f"{result.p99_ms:>9.1f}{result.max_ms:>9.1f}{ratio:>9}"
              f"{result.non_2xx + result.socket_errors:>8}{row.rss_mb:>8.0f}")
    if bridge := report.row(BRIDGE):
        print_goals(report, bridge.result)


def print_goals(report: IngestReport, bridge: LoadResult) -> None:
    bare, flask = report.row(BASELINE), report.row(FLASK)
    print()
    if bare:
        print(f"bridge / bare Starlette: {bridge.per_second / bare.result.per_second:.0%}"
              " (goal >= 35%)")
    if flask:
        print(f"bridge / SiteGPT Flask example: {bridge.per_second / flask.result.per_second:.1f}x"
              " (goal >= 5x)")
    print(f"bridge p99: {bridge.p99_ms:.1f} ms (goal <= 15)")
    print(f"ready {report.ready_seconds:.2f} s after start (goal <= 1.5); idle RSS "
          f"{report.idle_rss_mb:.0f} MB (goal <= 80); RSS after {report.soak_events:,} events "
          f"{report.soak_rss_mb:.0f} MB (goal <= 150); uses {' + '.join(report.native) or '-'}")


def print_delivery(report: DeliveryReport) -> None:
    latency, burst = report.latency, report.burst
    print("\nDelivery: the bridge's worker posting to a fake Slack on 127.0.0.1")
    print(f"webhook 200 -> Slack post, {latency.messages} messages one at a time: "
          f"p50 {latency.p50_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms, max {latency.max_ms:.1f} ms "
          "(goal: median < 100 ms)")
    for run in report.throughput:
        print(f"worker throughput, {run.messages} messages over {run.conversations:>3} "
              f"conversation(s): {run.per_second:6.1f} deliveries/s")
    if across := report.across_replicas:
        print(f"webhook 200 on replica A (--no-worker) -> Slack post by replica B's worker, "
              f"PostgreSQL, {across.messages} messages one at a time: p50 {across.p50_ms:.1f} ms,"
              f" p99 {across.p99_ms:.1f} ms, max {across.max_ms:.1f} ms")
    print(f"burst of {burst.messages} into one conversation, fake Slack allows {burst.rate:g}/s "
          f"per channel after a burst of 3 ([slack] per_second = {burst.rate:g}, burst = 3): "
          f"{burst.delivered} delivered in {burst.seconds:.1f} s, "
          f"{burst.rate_limited} answered 429, in order: {'yes' if burst.in_order else 'NO'}")
    lookups = report.lookups
    print(f"lookups for a cut-off attempt's post (conversations.replies), all runs above: "
          f"{lookups.lookups} for {lookups.deliveries:,} messages, "
          f"{lookups.per_thousand:.1f} per 1,000 (goal: 0)")


def reachable(server: str) -> str:
    """`server` if PostgreSQL answers there, else "" (its runs are skipped, saying why)."""
    if not server:
        return ""
    if server == SERVER and (reason := unreachable_because()):
        print(f"PostgreSQL runs skipped: {reason}")
        return ""
    return server


def print_backlog(report: Backlog) -> None:
    print(f"\nCatch-up: Slack down {report.outage_seconds:g} s while {report.conversations} "
          f"conversations send {report.messages} messages; fake Slack allows a burst of 3, then "
          "1 post/s per channel; default [slack] pacing")
    print(f"all shown {report.caught_up_seconds:.1f} s after Slack's return (goal <= 90 s) in "
          f"{report.posts} posts, {report.rate_limited} answered 429, in order: "
          f"{'yes' if report.in_order else 'NO'}; next live message posted "
          f"{report.live_seconds:.2f} s after its 200 (goal: a second or two); "
          f"{report.lookups} lookups for a cut-off attempt's post (goal: 0)")


def print_mattermost(report: ChatLatency) -> None:
    print("\nMattermost beside Slack: one bridge posting each message to both fakes on 127.0.0.1")
    for tool, latency in (("Slack", report.slack), ("Mattermost", report.mattermost)):
        print(f"webhook 200 -> {tool} post, {latency.messages} messages one at a time: "
              f"p50 {latency.p50_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms, "
              f"max {latency.max_ms:.1f} ms")


def print_mattermost_replies(report: ReplyLatency) -> None:
    print("\nReplies from Mattermost: a member's reply on the fake Mattermost's WebSocket, sent by "
          "one bridge to a fake SiteGPT API, both on 127.0.0.1")
    first = ", ".join(f"{ms:.1f}" for ms in report.first_ms)
    print(f"first reply of each of {len(MEMBERS)} members (not counted; the member looked up, "
          f"then cached): {first} ms")
    for what, latency in (("SiteGPT API call", report.sitegpt), ("the ✅ on the post",
                                                                 report.marked)):
        print(f"WebSocket event -> {what}, {latency.messages} replies one at a time: "
              f"p50 {latency.p50_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms, "
              f"max {latency.max_ms:.1f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    postgres = reachable(args.postgres)
    options = IngestOptions(seconds=args.seconds, connections=args.connections,
                            threads=args.threads, events=args.events,
                            generator=choose_generator(args.load), slack=args.slack,
                            servers=tuple(args.servers.split(",")), postgres=postgres)
    print(f"machine: {machine()}")
    if args.only in (None, "ingest"):
        print_ingest(run_ingest(options), options)
    if args.only in (None, "backlog"):
        print_backlog(run_backlog(BacklogOptions()))
    if args.only in (None, "delivery"):
        print_delivery(run_delivery(DeliveryOptions(burst_messages=args.burst,
                                                    burst_rate=args.burst_rate,
                                                    postgres=postgres)))
    if args.only in (None, "markup"):
        print_markup(run_markup())
    if args.only in (None, "mattermost"):
        print_mattermost(run_mattermost())
    if args.only in (None, "mattermost-replies"):
        print_mattermost_replies(run_mattermost_replies(args.replies))
    if args.only in (None, "console"):
        print_console(run_console(args.deliveries, postgres), args.deliveries)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
