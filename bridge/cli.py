"""The `sitegpt-bridge` command: serve, worker, check (and the operator commands)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import bridge.commands
import bridge.console.password  # noqa: F401  (registers console-password)
from bridge import __version__
from bridge.app import (
    announce,
    create_app,
    open_bridge,
    open_store_now,
)
from bridge.check import report_lines, verdicts
from bridge.config import resolve_config_path
from bridge.errors import BridgeError, ConfigError, StoreError
from bridge.logs import configure_logging, flush_logs
from bridge.redact import RedactingFilter, Redactor
from bridge.registry import COMMANDS, command, command_settings
from bridge.rejections import sum_up_all
from bridge.reload import reloading
from bridge.server import BridgeServer, listening_socket, server_config
from bridge.settings import Settings
from bridge.store import Backup, open_store
from bridge.store.url import backup_advice
from bridge.verdicts import Verdict

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
    with listening_socket(settings.server) as listening:  # a taken port stops it before all else
        return _serve(settings, listening, resolve_config_path(args.config)[0],
                      run_worker=not args.no_worker)


def _serve(settings: Settings, listening: socket.socket, settings_path: Path,
           run_worker: bool) -> int:
    bridge = open_bridge(settings)
    bridge.settings_path = settings_path
    # PostgreSQL: unreachable or too new stops here, in one line
    asyncio.run(bridge.store.migrate_now())
    app = create_app(bridge, run_worker=run_worker)
    server = settings.server
    log.info("sitegpt-bridge %s listening on http://%s:%d", __version__, server.host, server.port)
    BridgeServer(server_config(app, server)).run(sockets=[listening])
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


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="also print the effective settings, secrets masked")
    parser.add_argument("--json", action="store_true",
                        help="the verdicts and the effective settings as one JSON object")


@command("check", "validate settings and templates, test credentials: one verdict per line",
         _check_arguments)
def check(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    found = asyncio.run(_verdicts(settings, resolve_config_path(args.config)[0]))
    ok = all(verdict.ok for verdict in found)
    effective = settings.model_dump(mode="json")  # defaults filled in, secrets masked
    if args.json:
        print(json.dumps({"ok": ok, "checks": [verdict.as_json() for verdict in found],
                          "settings": effective}, indent=2, ensure_ascii=False))
        return 0 if ok else 1
    print("\n".join(report_lines(found)))
    if args.verbose:
        print("\neffective settings (defaults filled in, secrets masked):")
        print(json.dumps(effective, indent=2, ensure_ascii=False))
    return 0 if ok else 1


async def _verdicts(settings: Settings, path: Path) -> list[Verdict]:
    bridge = open_bridge(settings, check_templates=False, upgrade_store=False)
    try:
        return await verdicts(settings, path, bridge)
    finally:
        await bridge.close()


@command("backup", "copy the store to FILE, consistently, while the bridge runs",
         lambda p: p.add_argument("file", type=Path, help="where to write the copy"))
def backup(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    advice = backup_advice(settings.store.url, args.file)
    if advice is not None:
        print(f"sitegpt-bridge: {advice}", file=sys.stderr)
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
