"""Operator commands: preview templates, send a test webhook, list, retry and pause deliveries.

Each opens its own store on the same SQLite file, so it works while `serve` runs; none starts a
worker. Human output is an aligned table, `--json` one object per line; an error is one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bridge.destinations import REGISTRY, build_destinations, off_hint, templates_for
from bridge.destinations.base import Destination, sample_renderer
from bridge.drift import say_drift
from bridge.errors import BridgeError, TemplateError
from bridge.events import (
    MODELS,
    SHORT_KINDS,
    Event,
    InvalidEvent,
    parse_event,
    read_json,
)
from bridge.redact import Redactor
from bridge.registry import Arguments, command, command_settings
from bridge.samples import load_sample, sample_names
from bridge.sections import ServerSettings
from bridge.settings import Settings
from bridge.store import STATUSES, ConversationRecord, DeliveryRow, Store, open_store
from bridge.template_check import waiting_messages
from bridge.web import ENDPOINT_KINDS, TOKEN_HEADER

PROG = "sitegpt-bridge"
TEST_SAMPLES = {"messages": "message-bot-answer", "escalations": "escalation", "leads": "lead"}
LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
SEND_TIMEOUT = 10.0
TEST_VISITOR = "sitegpt-bridge test"
BATCH_SAMPLE = "messages-batch"
GAP = "  "
MIN_LAST_COLUMN = 24
UNTRUNCATED_WIDTH = 160


class UsageError(BridgeError):
    """Bad input to a command (a file, a sample, an id, a combination): one line, exit 2."""


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


Work = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def operator_command(name: str, help_text: str, arguments: Arguments) -> Callable[[Work], Work]:
    """Register an async command run with the --config settings; bad input is exit 2."""
    def register(work: Work) -> Work:
        def run(args: argparse.Namespace) -> int:
            settings = command_settings(args)
            try:
                return asyncio.run(work(settings, args))
            except UsageError as exc:
                _say(str(exc))
                return 2
        command(name, help_text, arguments)(run)
        return work
    return register


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


# render ------------------------------------------------------------------------------------------

def _render_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", metavar="FILE.json",
                        help="a webhook body as SiteGPT sends it")
    parser.add_argument("--sample", metavar="NAME",
                        help=f"a bundled sample instead: {', '.join(sample_names())}; or "
                             f"{BATCH_SAMPLE}: the message samples waiting together, as the "
                             "one reply they become in a chat thread after an outage")
    parser.add_argument("--target", choices=sorted(REGISTRY),
                        help="one destination (default: every one that takes the event)")
    parser.add_argument("--json", action="store_true",
                        help="the bodies exactly as sent, for `| jq` (default: as people see "
                             "them, where the destination can draw them)")


@operator_command(
    "render", "print what would be sent for a webhook body, rendered with your templates",
    _render_arguments)
async def render(settings: Settings, args: argparse.Namespace) -> int:
    samples, together = _payload(args.file, args.sample)
    folder = settings.templates.dir
    if folder is not None and not folder.is_dir():
        raise UsageError(f"templates.dir: {folder} is not a folder")
    destinations = build_destinations(settings, templates_for(settings))
    try:
        targets = _targets(destinations, next(iter(samples.values())), args.target)
        shown = [_show_preview(destination, samples, together,
                               _drawing(destination, settings, args.json))
                 for destination in targets]
    finally:
        for destination in destinations.values():
            await destination.aclose()
    return 0 if all(shown) else 1


def _payload(file: str | None, sample: str | None) -> tuple[dict[str, Event], bool]:
    """The events to render by label (a file's name or a sample's), and whether together."""
    if (file is None) == (sample is None):
        raise UsageError("render needs a FILE.json or --sample NAME, one of the two")
    if sample == BATCH_SAMPLE:
        return waiting_messages(), True
    if sample is not None:
        return {sample: _event_from(sample, _sample(sample))}, False
    path = Path(str(file))
    return {path.name: _event_from(str(path), _read_json(path))}, False


def _sample(name: str) -> Any:
    try:
        return load_sample(name)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from exc


def _read_json(path: Path) -> Any:
    """The body in `path`, read as the webhook reads one, so the preview is of what is stored."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return read_json(raw)
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from exc
    except InvalidEvent as exc:
        raise UsageError(f"{path}: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{path}: not JSON: {exc}") from exc


def _event_from(where: str, body: Any) -> Event:
    """The typed event of a webhook body, or UsageError naming what is wrong with it."""
    kind = body.get("event") if isinstance(body, dict) else None
    if kind not in MODELS:
        raise UsageError(f'{where}: "event" must be one of {", ".join(MODELS)}')
    try:
        return parse_event(kind, body)
    except InvalidEvent as exc:
        raise UsageError(f"{where}: {exc}") from exc


def _targets(destinations: Mapping[str, Destination], event: Event,
             target: str | None) -> list[Destination]:
    if target is None:
        chosen = [item for item in destinations.values() if item.accepts(event.event)]
        if not chosen:
            raise UsageError(f"no destination takes {event.event} events with these settings"
                             + off_hint(event.event))
        return chosen
    destination = destinations.get(target)
    if destination is None:
        raise UsageError(f"{target} is switched off in these settings")
    if not destination.accepts(event.event):
        raise UsageError(f"{target} does not take {event.event} events")
    return [destination]


def _drawing(destination: Destination, settings: Settings,
             as_json: bool) -> Callable[[str], str]:
    """How a body is printed: as sent, or drawn as people see it when the plugin can."""
    plugin = REGISTRY[destination.name]
    picture = plugin.picture
    if picture is None or as_json:
        return str
    state = plugin.state(settings)
    return lambda body: picture(body, state)


def _show_preview(destination: Destination, samples: Mapping[str, Event],
                  together: bool, draw: Callable[[str], str]) -> bool:
    """Bodies on stdout (so `| jq` works), a heading for each on stderr; False on failure.

    `together`: only what shows the samples together (a batch), not each one on its own.
    """
    render_samples = sample_renderer(destination)
    if render_samples is None:
        _say(f"{destination.name}: cannot show what it would send")
        return False
    try:
        rendered = render_samples(samples)
    except TemplateError as exc:
        _say(f"{destination.name}: {exc}")
        return False
    if together:
        alone = tuple(f"{label}: " for label in samples)
        rendered = {what: text for what, text in rendered.items() if not what.startswith(alone)}
    for what, text in rendered.items():
        sys.stdout.flush()
        print(f"# {destination.name}: {what}", file=sys.stderr, flush=True)
        print(draw(text), flush=True)
    return True


# send-test ---------------------------------------------------------------------------------------

def _send_test_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("endpoint", choices=list(ENDPOINT_KINDS), help="the webhook to call")
    parser.add_argument("--url", help="its URL (default: http://HOST:PORT/webhooks/ENDPOINT, "
                                      "from [server])")
    parser.add_argument("--sample", metavar="NAME",
                        help="the body to send (default: " + ", ".join(
                            f"{sample} to {name}" for name, sample in TEST_SAMPLES.items()) + ")")


@operator_command(
    "send-test", "post a sample event to a running bridge, as SiteGPT's test webhook does",
    _send_test_arguments)
async def send_test(settings: Settings, args: argparse.Namespace) -> int:
    endpoint = args.endpoint
    tokens = getattr(settings.webhooks, endpoint).tokens
    if not tokens:
        raise UsageError(f"webhooks.{endpoint} has no token to send with; set one first")
    sample = args.sample or TEST_SAMPLES[endpoint]
    test_id = _test_id()
    body = as_new_test(_test_body(endpoint, sample), test_id)
    url = args.url or webhook_url(settings.server, endpoint)
    await say_drift(settings, args.config)
    print(f"POST {url} (sample {sample} as {test_id})")
    try:
        async with httpx.AsyncClient(timeout=SEND_TIMEOUT) as client:
            answer = await client.post(
                url, json=body, headers={TOKEN_HEADER: tokens[0].get_secret_value()})
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        _say(f"cannot reach {url}: {str(exc) or type(exc).__name__}; is the bridge running?")
        return 1
    print(f"HTTP {answer.status_code} {answer.reason_phrase}: {answer.text}")
    if _answer_status(answer) == "duplicate":
        print("(an identical body arrived within the dedup window: nothing new is delivered)")
    return 0 if answer.status_code == 200 else 1


def _answer_status(answer: httpx.Response) -> str | None:
    try:
        body = answer.json()
    except ValueError:
        return None
    return body.get("status") if isinstance(body, dict) else None


def _test_body(endpoint: str, sample: str) -> Any:
    body = _sample(sample)
    if body.get("event") != ENDPOINT_KINDS[endpoint]:
        raise UsageError(f"sample {sample} is a {body.get('event')} event; the {endpoint} "
                         f"webhook takes {ENDPOINT_KINDS[endpoint]}")
    return body


def _test_id() -> str:
    """A name no earlier run used, so the test is a new event and not a `duplicate`."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"send-test-{stamp}-{secrets.token_hex(3)}"


def as_new_test(body: dict[str, Any], test_id: str) -> dict[str, Any]:
    """The sample as a test of its own: its own thread (or lead), its visitor named a test."""
    data = dict(body.get("data") or {})
    if "threadId" in data:
        data["threadId"] = test_id
        if isinstance(data.get("dashboardUrl"), str):
            data["dashboardUrl"] = data["dashboardUrl"].replace(body["data"]["threadId"], test_id)
    if isinstance(data.get("user"), dict):
        data["user"] = {**data["user"], "name": TEST_VISITOR}
    if isinstance(data.get("leadDetails"), dict):
        data["leadDetails"] = {**data["leadDetails"], "id": test_id, "name": TEST_VISITOR}
    return {**body, "data": data}


def webhook_url(server: ServerSettings, endpoint: str) -> str:
    """Where this machine reaches the bridge: a wildcard listen address means loopback."""
    host = LOOPBACK.get(server.host, server.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{server.port}/webhooks/{endpoint}"


# deliveries, retry, conversations ----------------------------------------------------------------

@contextlib.asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[Store]:
    """The bridge's own store, opened beside a running `serve` (SQLite WAL allows both)."""
    if settings.store.backend == "sqlite" and not settings.store.sqlite_path.exists():
        raise UsageError(f"no store at {settings.store.sqlite_path}: has the bridge run with "
                         "these settings?")
    store = open_store(settings.store.url, settings.store.synchronous,
                       settings.store.commit_timeout_seconds, pool_size=2, upgrade=False)
    try:
        yield store
    finally:
        await store.close()


def _list_arguments(parser: argparse.ArgumentParser, default_limit: int) -> None:
    parser.add_argument("--limit", type=_positive, default=default_limit, metavar="N",
                        help=f"at most N, newest first (default {default_limit})")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line with stable keys, for scripts")


def _deliveries_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", choices=STATUSES)
    parser.add_argument("--conversation", metavar="ID",
                        help="a thread id, or chatbot_id/thread_id")
    _list_arguments(parser, 50)


@operator_command(
    "deliveries", "list deliveries: event, destination, status, attempts, last error",
    _deliveries_arguments)
async def deliveries(settings: Settings, args: argparse.Namespace) -> int:
    async with _store(settings) as store:
        rows = await store.deliveries(args.status, args.conversation, args.limit)
    # Errors stored by a version that did not redact them are shown masked all the same.
    redact = Redactor.for_settings(settings)
    rows = [_masked(row, redact) for row in rows]
    if args.json:
        print_json_lines(delivery_json(row) for row in rows)
    else:
        print_table(DELIVERY_COLUMNS, [delivery_cells(row) for row in rows], "no deliveries")
    return 0


def _masked(row: DeliveryRow, redact: Callable[[str], str]) -> DeliveryRow:
    """The row with every stored text (error, note, each attempt's error) passed through redact."""
    def mask(text: str | None) -> str | None:
        return redact(text) if text else text

    errors = tuple(replace(attempt, error=mask(attempt.error)) for attempt in row.errors)
    return replace(row, last_error=mask(row.last_error), note=mask(row.note), errors=errors)


DELIVERY_COLUMNS = ("ID", "EVENT", "DESTINATION", "STATUS", "ATTEMPTS", "NEXT ATTEMPT",
                    "CONVERSATION", "LAST ERROR / NOTE")


def delivery_json(row: DeliveryRow) -> dict[str, Any]:
    """A delivery for scripts: its note apart from its errors, the last few attempts' errors."""
    return {
        "id": row.id, "event_id": row.event_id, "kind": row.kind,
        "destination": row.destination, "conversation": row.ordering_key,
        "status": row.status, "attempts": row.attempts,
        "next_attempt_at": local_iso(row.next_attempt_at) if row.status == "pending" else None,
        "last_error": row.last_error, "note": row.note,
        "errors": [{"attempt": attempt.attempt, "outcome": attempt.outcome,
                    "error": attempt.error, "at": local_iso(attempt.at)}
                   for attempt in row.errors],
        "created_at": local_iso(row.created_at), "finished_at": local_iso(row.finished_at),
    }


def delivery_cells(row: DeliveryRow) -> list[str]:
    pending = row.status == "pending"
    return [str(row.id), f"{row.event_id} {SHORT_KINDS.get(row.kind, row.kind)}",
            row.destination, row.status, str(row.attempts),
            local_time(row.next_attempt_at) if pending else "-", row.ordering_key,
            _error_or_note(row)]


def _error_or_note(row: DeliveryRow) -> str:
    """The last error (and how many attempts failed before it), else the note."""
    if row.last_error:
        earlier = len(row.errors) - 1
        return row.last_error + (f" (+{earlier} earlier, see --json)" if earlier > 0 else "")
    return row.note or "-"


def _retry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", type=_positive, metavar="ID",
                        help="delivery ids as `deliveries` shows them (any finished status)")
    parser.add_argument("--failed", action="store_true",
                        help="every failed delivery (skipped dry runs only by id)")
    parser.add_argument("--destination", metavar="NAME",
                        help=f"with --failed: only this destination's ({', '.join(REGISTRY)})")


@operator_command(
    "retry", "put deliveries back in the queue; a running worker picks them up",
    _retry_arguments)
async def retry(settings: Settings, args: argparse.Namespace) -> int:
    if bool(args.ids) == args.failed:
        raise UsageError("retry needs delivery ids or --failed, one of the two")
    if args.destination and not args.failed:
        raise UsageError("--destination goes with --failed")
    async with _store(settings) as store:
        await say_drift(settings, args.config, store)
        if args.ids:
            count = await _retry_ids(store, args.ids)
        else:
            count = await store.retry(failed=True, destination=args.destination, now=time.time())
    noun = "delivery" if count == 1 else "deliveries"
    poll = settings.delivery.poll_interval.total_seconds()
    print(f"requeued {count} {noun}" + (
        f"; a running worker picks them up within {poll:g} s" if count else ""))
    return 0


async def _retry_ids(store: Store, ids: Sequence[int]) -> int:
    """All named ids must exist, so a typo requeues nothing; pending ones are left as they are."""
    wanted = list(dict.fromkeys(ids))
    found = {row.id: row for row in await store.deliveries(ids=wanted, limit=len(wanted))}
    missing = [str(delivery_id) for delivery_id in wanted if delivery_id not in found]
    if missing:
        raise UsageError(f"no delivery with id {', '.join(missing)}; nothing was requeued")
    pending = [str(delivery_id) for delivery_id in wanted if found[delivery_id].status == "pending"]
    if pending:
        print(f"already pending: {', '.join(pending)}")
    return await store.retry(ids=wanted, now=time.time())


def _destination_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("destination", choices=list(REGISTRY), metavar="DESTINATION",
                        help=f"one of {', '.join(REGISTRY)}")


@operator_command(
    "pause", "hold a destination's deliveries (on every replica) until `resume`",
    _destination_argument)
async def pause(settings: Settings, args: argparse.Namespace) -> int:
    async with _store(settings) as store:
        changed = await store.pause(args.destination, time.time())
    print(f"{args.destination}: paused" + ("" if changed else " already"))
    return 0


@operator_command(
    "resume", "let a paused destination's deliveries go again, in order",
    _destination_argument)
async def resume(settings: Settings, args: argparse.Namespace) -> int:
    async with _store(settings) as store:
        changed = await store.resume(args.destination)
    print(f"{args.destination}: " + ("resumed" if changed else "was not paused"))
    return 0


@operator_command(
    "conversations", "list recent conversations with each destination's link (thread, ticket)",
    lambda parser: _list_arguments(parser, 20))
async def conversations(settings: Settings, args: argparse.Namespace) -> int:
    async with _store(settings) as store:
        records = await store.conversations(args.limit)
    if args.json:
        print_json_lines(conversation_json(record) for record in records)
    else:
        print_table(CONVERSATION_COLUMNS, [conversation_cells(record) for record in records],
                    "no conversations")
    return 0


CONVERSATION_COLUMNS = ("CONVERSATION", "LAST SEEN", "ESCALATED", "LINKS")


def conversation_json(record: ConversationRecord) -> dict[str, Any]:
    """A conversation for scripts: each destination's link by name, with its whole state."""
    return {
        "chatbot_id": record.chatbot_id, "thread_id": record.thread_id,
        "escalated_at": local_iso(record.escalated_at),
        "first_seen": local_iso(record.first_seen), "last_seen": local_iso(record.last_seen),
        "links": {link.destination: {"ref": link.ref, "state": link.state}
                  for link in record.links},
    }


def conversation_cells(record: ConversationRecord) -> list[str]:
    links = " ".join(f"{link.destination}:{link.ref}" for link in record.links if link.ref)
    return [f"{record.chatbot_id}/{record.thread_id}", local_time(record.last_seen),
            local_time(record.escalated_at) if record.escalated_at else "-", links or "-"]


# output ------------------------------------------------------------------------------------------

def local_iso(epoch: float | None) -> str | None:
    """Full local ISO 8601 with the UTC offset, for scripts."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def local_time(epoch: float | None) -> str:
    """Local ISO 8601 date and time, short enough for a table column."""
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="seconds")


def print_json_lines(objects: Iterable[Mapping[str, Any]]) -> None:
    for item in objects:
        print(json.dumps(item, ensure_ascii=False))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> None:
    """Aligned columns; the last one (errors, notes) is cut to fit the terminal."""
    if not rows:
        print(empty)
        return
    cells = [[_one_line(cell) for cell in row] for row in rows]
    widths = [max(len(header), *(len(row[i]) for row in cells))
              for i, header in enumerate(headers[:-1])]
    room = max(_terminal_width() - sum(widths) - len(GAP) * len(widths), MIN_LAST_COLUMN)
    for row in [list(headers), *cells]:
        fixed = GAP.join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        print(f"{fixed}{GAP}{_fit(row[-1], room)}".rstrip())


def _one_line(cell: str) -> str:
    """The cell as one line the terminal shows as it is: ids and errors come from outside, and
    an escape sequence or a bidi override in them must not act on the operator's terminal."""
    return "".join(char if char.isprintable() else "\ufffd" for char in " ".join(cell.split()))


def _terminal_width() -> int:
    return shutil.get_terminal_size((UNTRUNCATED_WIDTH, 24)).columns


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
