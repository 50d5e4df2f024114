"""The console's password: `console-password` makes its argon2id hash; login checks it."""

from __future__ import annotations

import argparse
import getpass
import sys
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from bridge.errors import BridgeError
from bridge.registry import command

HASHER = PasswordHasher()  # argon2id with the library's current recommended cost


@cache
def _decoy() -> str:
    """Verified when no password hash is set, so that takes as long as a wrong password.

    Made on first use, not at import: every command imports this module, and a hash costs
    about 0.1 s of CPU.
    """
    return HASHER.hash("not the password")


def hash_password(password: str) -> str:
    if not password:
        raise BridgeError("the password is empty: nothing was hashed")
    return HASHER.hash(password)


def password_matches(password_hash: str | None, presented: str) -> bool:
    """Whether `presented` is the password; argon2 runs whatever the outcome, so it takes as
    long for a wrong password as for the right one."""
    try:
        return HASHER.verify(password_hash or _decoy(), presented) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def _read_password() -> str:
    """Asked twice on a terminal; otherwise one line of standard input (a script, a pipe)."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("console password: ")
    if getpass.getpass("again: ") != first:
        raise BridgeError("the two passwords differ: nothing was hashed")
    return first


def _no_settings(parser: argparse.ArgumentParser) -> None:
    """It needs no settings: the hash is what goes into them."""


@command("console-password",
         "print the argon2id hash of a console password, for [console] password_hash",
         _no_settings)
def console_password(args: argparse.Namespace) -> int:
    print(hash_password(_read_password()))
    return 0
