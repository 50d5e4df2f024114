"""The `sitegpt-bridge` command: serve, worker, check (and the operator commands)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import bridge.commands  # noqa: F401  (registers the operator commands)
from bridge import __version__
from bridge.app import (
    announce,
    create_app,
    open_bridge,
    open_store_now,
    slow_lease,
)
from bridge.config import resolve_config_path
from bridge.destinations import REGISTRY, status_lines, unfinished_lines
from bridge.drift import settings_drift
from bridge.errors import BridgeError, ConfigError, DeliveryError, StoreError
from bridge.logs import configure_logging, flush_logs
from bridge.redact import RedactingFilter, Redactor
from bridge.registry import COMMANDS, command, command_settings
from bridge.rejections import sum_up_all
from bridge.reload import reloading
from bridge.server import BridgeServer, server_config
from bridge.settings import Settings
from bridge.store import Backup, open_store
from bridge.store.postgres.advice import pg_dump_advice
from bridge.template_check import check_templates

__all__ = ["COMMANDS", "build_parser", "main", "server_config"]
log = logging.getLogger("bridge")


def _settings(args: argparse.Namespace, background: bool = False) -> Settings:
    settings = command_settings(args)
    configure_logging(settings.log.level, settings.log.format, background,
                      RedactingFilter(Redactor.for_settings(settings)))
    return settings


@command("serve", "receive webhooks and deliver them (web server and worker in one process)",
         lambda p: p.add_argument("--no-worker", action="store_true",
                                  help="only receive; run `sitegpt-bridge worker` separately"))
def serve(args: argparse.Namespace) -> int:
    settings = _settings(args, background=True)
    bridge = open_bridge(settings)
    bridge.settings_path = resolve_config_path(args.config)[0]
    migrate_now = getattr(bridge.store, "migrate_now", None)
    if migrate_now is not None:  # PostgreSQL: unreachable or too new stops here, in one line
        asyncio.run(migrate_now())
    app = create_app(bridge, run_worker=not args.no_worker)
    server = settings.server
    log.info("sitegpt-bridge %s listening on http://%s:%d", __version__, server.host, server.port)
    BridgeServer(server_config(app, server)).run()
    sum_up_all()
    log.info("sitegpt-bridge stopped")
    flush_logs()
    return 0


@command("worker", "deliver pending events, without serving webhooks")
def worker(args: argparse.Namespace) -> int:
    settings = _settings(args, background=True)
    asyncio.run(_run_worker(settings, resolve_config_path(args.config)[0]))
    return 0


async def _run_worker(settings: Settings, settings_path: Path | None = None) -> None:
    bridge = open_bridge(settings)
    bridge.settings_path = settings_path
    await open_store_now(bridge)
    announce(bridge)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bridge.start_worker()
    async with reloading(bridge, "worker"):
        await stop.wait()
    log.info("worker stopping")
    await bridge.close()
    log.info("worker stopped")
    flush_logs()


@command("check", "validate settings and templates, print settings with secrets masked, "
                  "test credentials")
def check(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    print(json.dumps(settings.model_dump(mode="json"), indent=2, ensure_ascii=False))
    return asyncio.run(_check_destinations(settings, args.config))


async def _check_destinations(settings: Settings, config: str | None = None) -> int:
    bridge = open_bridge(settings, check_templates=False, upgrade_store=False)
    redact = Redactor.for_settings(settings)
    problems = 0
    try:
        report = check_templates(bridge.templates, bridge.destinations)
        print("\n".join(report.lines(settings.templates.dir)))
        problems += len(report.problems)
        for name in REGISTRY:
            destination = bridge.destinations.get(name)
            if destination is None:
                print(f"{name}: off")
                continue
            try:
                print(f"{name}: {await destination.verify()}")
            except DeliveryError as exc:
                print(f"{name}: FAILED: {redact(str(exc))}")
                problems += 1
        for line in status_lines(settings):
            print(line)
        info = await bridge.store.info()
        print(f"store: {info.backend} at {info.location}, schema version {info.schema_version}")
        for line in await settings_drift(settings, bridge.store, config):
            print(line)
        for name in settings.example_tokens_in_use():
            print(f"webhooks.{name}: WARNING: still the example token from settings.example.toml")
        slow = slow_lease(settings)
        if slow is not None:
            print(f"delivery.lease: WARNING: {slow.removeprefix('delivery.lease is ')}")
        problems += _print_unfinished_settings(settings)
    finally:
        await bridge.close()
    return 1 if problems else 0


def _print_unfinished_settings(settings: Settings) -> int:
    """Webhooks without a token and half-set destinations pass validation but fail later."""
    lines = [f"webhooks.{name}: FAILED: no token, so it answers 503: set [webhooks.{name}] "
             f"tokens or BRIDGE_WEBHOOKS__{name.upper()}__TOKENS"
             for name in settings.unconfigured_endpoints()]
    lines += [line.replace(": ", ": FAILED: ", 1) for line in unfinished_lines(settings)]
    for line in lines:
        print(line)
    return len(lines)


@command("backup", "copy the store to FILE, consistently, while the bridge runs",
         lambda p: p.add_argument("file", type=Path, help="where to write the copy"))
def backup(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    if settings.store.backend == "postgresql":
        print(f"sitegpt-bridge: {pg_dump_advice(settings.store.url, args.file)}",
              file=sys.stderr)
        return 1
    copy = asyncio.run(_backup(settings, args.file))
    print(f"backed up {settings.store.sqlite_path} to {copy.path}: {copy.events} events, "
          f"{copy.deliveries} deliveries ({copy.pending} pending), {copy.size} bytes")
    return 0


async def _backup(settings: Settings, target: Path) -> Backup:
    source = settings.store.sqlite_path
    if not source.is_file():
        raise StoreError(f"no store at {source}: check [store] url (or BRIDGE_STORE__URL)")
    store = open_store(settings.store.url, settings.store.synchronous, upgrade=False)
    try:
        return await store.backup(target)
    finally:
        await store.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sitegpt-bridge",
        description="Delivers SiteGPT webhooks to the chat, ticket and CRM tools you use.")
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, func, arguments) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", metavar="FILE",
                         help="settings file (default: $BRIDGE_CONFIG, else ./settings.toml, "
                              "else ./settings.example.toml)")
        arguments(sub)
        sub.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"sitegpt-bridge: {exc}", file=sys.stderr)
        for problem in exc.problems if exc.problems != [str(exc)] else []:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    except BridgeError as exc:
        print(f"sitegpt-bridge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sitegpt-bridge deliveries | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
