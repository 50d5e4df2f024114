"""The subcommands of `sitegpt-bridge`, registered by name: the CLI and its commands share it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bridge.config import load_settings, resolve_config_path
from bridge.settings import Settings

Command = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], object]  # add_argument's Action is ignored
COMMANDS: dict[str, tuple[str, Command, Arguments]] = {}


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command that takes only the common --config."""


def command(name: str, help_text: str,
            arguments: Arguments = _no_arguments) -> Callable[[Command], Command]:
    """Register a subcommand with its help line and its own arguments."""
    def register(func: Command) -> Command:
        COMMANDS[name] = (help_text, func, arguments)
        return func
    return register


def command_settings(args: argparse.Namespace) -> Settings:
    """The settings of a command, found as `make run` finds them; the example file is noted."""
    path, note = resolve_config_path(args.config)
    if note:
        print(f"sitegpt-bridge: {note}", file=sys.stderr)
    return load_settings(str(path))
