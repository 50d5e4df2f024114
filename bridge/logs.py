"""Logging: one JSON object per line (plain text on a terminal), never a secret."""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

FLUSH_TIMEOUT = 5.0
MAX_LINES_PER_WRITE = 1000
LINGER = 0.05

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """time, level, logger, message and whatever `extra` the call gave (event id, outcome...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {key: value for key, value in vars(record).items() if key not in _STANDARD}
        if record.exc_text:  # already formatted (and redacted)
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _utc_time(created: float) -> str:
    """ISO 8601 in UTC with milliseconds: sortable, and unambiguous across servers."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class BackgroundHandler(logging.Handler):
    """Formats and writes records on a thread of its own, whatever is queued in one write.

    A webhook's log line then costs the request only the record; under a burst the lines go
    out in blocks, one system call for many. The order of lines is kept. What is still queued
    when the process is killed with SIGKILL is lost (milliseconds of lines); a normal exit,
    and flush(), write everything.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._queue: queue.SimpleQueue[logging.LogRecord | threading.Event | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._write_forever, name="log-writer",
                                        daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:  # the message is merged now, while its arguments still hold what they held
            record.msg, record.args = record.getMessage(), None
        except Exception:  # a call whose arguments do not fit its format, as StreamHandler does
            self.handleError(record)
            return
        self._queue.put(record)

    def flush(self) -> None:
        """Return once every line logged so far is written."""
        if self._thread.is_alive():
            written = threading.Event()
            self._queue.put(written)
            written.wait(FLUSH_TIMEOUT)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(FLUSH_TIMEOUT)
        super().close()

    def _write_forever(self) -> None:
        while True:
            items = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while len(items) < MAX_LINES_PER_WRITE:
                    items.append(self._queue.get_nowait())
            records = [item for item in items if isinstance(item, logging.LogRecord)]
            if records:
                self._write(records)
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
            if None in items:
                return
            time.sleep(LINGER)  # let a burst's lines gather: one wake-up and write for many

    def _write(self, records: list[logging.LogRecord]) -> None:
        lines = []
        for record in records:
            try:
                lines.append(self.format(record) + "\n")
            except Exception:  # a bad record must not stop the others
                self.handleError(record)
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except Exception:  # stderr closed or full: these lines are lost
            self.handleError(records[0])


def configure_logging(level: str = "INFO", fmt: str = "auto", background: bool = False,
                      redact: logging.Filter | None = None) -> None:
    """Route every logger (ours, uvicorn's) to stderr in the chosen format.

    `background` (serve, worker): records are written by a thread of their own, see
    BackgroundHandler; commands write each line at once. `redact` masks secrets in every line.
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = BackgroundHandler(sys.stderr) if background else logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if use_json else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    if redact is not None:
        handler.addFilter(redact)
    root = logging.getLogger()
    for replaced in root.handlers:
        if isinstance(replaced, BackgroundHandler):
            replaced.close()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for noisy in ("httpx", "httpcore", "urllib3", "slack_sdk"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def flush_logs() -> None:
    """Return once every line logged so far is written (a normal stop loses none)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
