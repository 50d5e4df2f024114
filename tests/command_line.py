"""Operator commands run in-process, seen as a shell would see them."""

from __future__ import annotations

import pytest

from bridge.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one command, as a shell would see them."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse rejects bad arguments this way
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
