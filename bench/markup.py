"""Jira comment conversion on hostile markup: each kind, 1 MiB of it, timed in this process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from bridge.jira_markup import adf_mrkdwn, comment_mrkdwn, wiki_mrkdwn

MIB = 1 << 20
GOAL_MS = 100.0


def _repeat(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _table_doc(size: int) -> dict[str, Any]:
    """An ADF table of one-word cells whose JSON is about `size` bytes."""
    cell = {"type": "tableCell", "content": [{"type": "paragraph",
                                              "content": [{"type": "text", "text": "cell"}]}]}
    row = {"type": "tableRow", "content": [cell] * 4}
    rows = max(size // len(json.dumps(row)), 1)
    return {"type": "doc", "content": [{"type": "table", "content": [row] * rows}]}


# Each hostile shape: a mark that never closes, marks that could pair with any later one,
# brackets nested deep, a block that never ends, a table as long as the body allows.
WIKI: dict[str, Callable[[int], str]] = {
    "plain words": lambda size: _repeat("the quick brown fox jumps. ", size),
    "repeated +a": lambda size: _repeat("+a ", size),
    "paired +a+ -b-": lambda size: _repeat("+a+ -b- ", size),
    "repeated -a": lambda size: _repeat("-a ", size),
    "repeated ^a ~a": lambda size: _repeat("^a ~a ", size),
    "unclosed {{": lambda size: _repeat("{{a ", size),
    "unclosed ??": lambda size: _repeat("??a ", size),
    "unclosed [~": lambda size: _repeat("[~a ", size),
    "unclosed {color:": lambda size: _repeat("{color:a ", size),
    "unclosed !image": lambda size: _repeat("!a|", size),
    "nested [[[ ]]]": lambda size: "[" * (size // 2) + "]" * (size // 2),
    "repeated [a|": lambda size: _repeat("[a|", size),
    "{code} without end": lambda size: "{code}" + _repeat("x < y ", size - 6),
    "repeated {code:x}": lambda size: _repeat("{code:x}", size),
    "long wiki table": lambda size: _repeat("|a|*b*|-c-|\n", size),
    "escaped \\\\ breaks": lambda size: _repeat("+a\\\\", size),
}


@dataclass(frozen=True)
class MarkupTiming:
    shape: str
    size: int
    milliseconds: float  # the converter alone, over the whole input
    received_ms: float  # a comment of that size as the bridge converts it: cut at Jira's limit

    @property
    def within_goal(self) -> bool:
        return self.received_ms < GOAL_MS * self.size / MIB


def _timed(convert: Callable[[], str]) -> float:
    """The best of three runs, in ms: the machine is shared, the least disturbed run counts."""
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        convert()
        runs.append((time.perf_counter() - started) * 1000)
    return min(runs)


def run_markup(size: int = MIB) -> list[MarkupTiming]:
    """Each hostile shape at `size` bytes (characters), wiki markup and ADF."""
    timings = [MarkupTiming(shape, size, _timed(partial(wiki_mrkdwn, make(size))),
                            _timed(partial(comment_mrkdwn, make(size))))
               for shape, make in WIKI.items()]
    table = _table_doc(size)
    timings.append(MarkupTiming("long ADF table", size, _timed(partial(adf_mrkdwn, table)),
                                _timed(partial(comment_mrkdwn, table))))
    return timings


def print_markup(timings: list[MarkupTiming]) -> None:
    size = timings[0].size if timings else MIB
    print(f"\nJira comment to Slack mrkdwn, {size:,} characters of each shape "
          f"(goal < {GOAL_MS * size / MIB:.0f} ms as received)")
    print(f"{'shape':<22}{'converter':>13}{'as received':>15}")
    for timing in timings:
        verdict = "ok" if timing.within_goal else "SLOW"
        print(f"{timing.shape:<22}{timing.milliseconds:>10.1f} ms"
              f"{timing.received_ms:>12.1f} ms  {verdict}")
