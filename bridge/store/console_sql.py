"""The console's SQL, written once with the backend's placeholder filled in (`?` or `%s`)."""

from __future__ import annotations

import re
from typing import Any

from bridge.store.filters import DeliveryFilter
from bridge.store.records import ConversationPage, ConversationRecord

NEWEST_FIRST = "ORDER BY last_seen DESC, chatbot_id DESC, thread_id DESC"

CANCELLED = "cancelled in the console"
# The waiting deliveries of every destination, from the pending ones alone (a small index).
PENDING = """
SELECT destination,
  COUNT(*) AS waiting,
  SUM(CASE WHEN next_attempt_at <= {m} THEN 1 ELSE 0 END) AS due,
  SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END) AS retrying
FROM deliveries d WHERE status = 'pending' GROUP BY destination
"""
# One destination's finished deliveries: seeks on deliveries_finished, however many there are.
FINISHED = """
SELECT
  (SELECT COUNT(*) FROM deliveries WHERE destination = {m} AND status = 'failed') AS failed,
  (SELECT MAX(finished_at) FROM deliveries
     WHERE destination = {m} AND status = 'delivered') AS last_success,
  (SELECT MAX(finished_at) FROM deliveries
     WHERE destination = {m} AND status = 'failed') AS last_failure
"""
LAST_ERROR = ("SELECT last_error FROM deliveries WHERE destination = {m} AND status = 'failed'"
              " ORDER BY finished_at DESC LIMIT 1")
PAGE_COLUMNS = ("SELECT d.id, d.event_id, e.kind, d.destination, d.ordering_key, d.status,"
                " d.attempts, d.next_attempt_at, d.last_error, d.note, d.created_at,"
                " d.finished_at FROM deliveries d JOIN events e ON e.id = d.event_id")
# Only a delivery no worker holds now can be cancelled: one in flight finishes as it goes.
CANCELLABLE = "d.status = 'pending' AND (d.lease_until IS NULL OR d.lease_until <= {m})"


def page(matching: DeliveryFilter, before: int | None, limit: int,
         mark: str) -> tuple[str, list[Any]]:
    """Newest first from below the id `before`: a seek on the primary key, never an OFFSET."""
    clauses, params = matching.where(mark)
    if before is not None:
        clauses.append(f"d.id < {mark}")
        params.append(before)
    return (f"{PAGE_COLUMNS}{_where(clauses)} ORDER BY d.id DESC LIMIT {mark}",
            [*params, limit])


def count(matching: DeliveryFilter, mark: str) -> tuple[str, list[Any]]:
    clauses, params = matching.where(mark)
    return f"SELECT COUNT(*) FROM deliveries d{_where(clauses)}", params


def retry(matching: DeliveryFilter, ids: list[int], now: float,
          mark: str) -> tuple[str, list[Any]]:
    """Requeue the finished deliveries that match (and are among `ids`, if any are named)."""
    clauses, params = _chosen(matching, ids, mark)
    clauses.append("d.status != 'pending'")
    return ("UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = "
            f"{mark}, finished_at = NULL, lease_owner = NULL, lease_until = NULL,"
            f" lease_token = NULL WHERE id IN (SELECT d.id FROM deliveries d{_where(clauses)})",
            [now, *params])


def cancel(matching: DeliveryFilter, ids: list[int], now: float,
           mark: str) -> tuple[str, list[Any]]:
    """Give up the waiting deliveries that match: skipped, with a note saying who did."""
    clauses, params = _chosen(matching, ids, mark)
    clauses.append(CANCELLABLE.format(m=mark))
    params.append(now)
    return (f"UPDATE deliveries SET status = 'skipped', finished_at = {mark}, note = {mark}"
            f" WHERE id IN (SELECT d.id FROM deliveries d{_where(clauses)})",
            [now, CANCELLED, *params])


def _chosen(matching: DeliveryFilter, ids: list[int], mark: str) -> tuple[list[str], list[Any]]:
    clauses, params = matching.where(mark)
    if ids:
        clauses.append(f"d.id IN ({','.join([mark] * len(ids))})")
        params += ids
    return clauses, params


# A conversation's place in the list: its key for the page after it.
ConversationKey = tuple[float, str, str]
# A search reads this many conversations at most, from the newest: its cost does not grow
# with the store, and the next page reads as many again, from where this one stopped.
SEARCH_WINDOW = 2000
KEY_COLUMNS = "(last_seen, chatbot_id, thread_id)"


def _after(before: ConversationKey | None, mark: str) -> tuple[list[str], list[Any]]:
    if before is None:
        return [], []
    return [f"{KEY_COLUMNS} < ({mark}, {mark}, {mark})"], list(before)


def window_end(before: ConversationKey | None, mark: str) -> tuple[str, list[Any]]:
    """The key of the last conversation a search reads, if it reads a whole window."""
    clauses, params = _after(before, mark)
    return (f"SELECT last_seen, chatbot_id, thread_id FROM conversations{_where(clauses)}"
            f" {NEWEST_FIRST} LIMIT 1 OFFSET {mark}", [*params, SEARCH_WINDOW - 1])


def conversation_search(search: str, before: ConversationKey | None,
                        end: ConversationKey | None, mark: str,
                        state: str) -> tuple[str, list[Any]]:
    """The WHERE of a page of conversations after `before`, within the window up to `end`,
    whose ids or any destination's link to it (its ref, or its state: Slack's names the
    visitor) contain `search`, whatever the case. `state` is the link's state as text."""
    clauses, params = _after(before, mark)
    if end is not None:
        clauses.append(f"{KEY_COLUMNS} >= ({mark}, {mark}, {mark})")
        params += end
    if search:
        like = "%" + re.sub(r"([\\%_])", r"\\\1", search.lower()) + "%"
        contains = f"LIKE {mark} ESCAPE '\\'"
        clauses.append(
            f"(LOWER(chatbot_id) {contains} OR LOWER(thread_id) {contains} OR EXISTS ("
            "SELECT 1 FROM conversation_links l WHERE l.chatbot_id = conversations.chatbot_id"
            f" AND l.thread_id = conversations.thread_id AND (LOWER({state}) {contains}"
            f" OR LOWER(l.ref) {contains})))")
        params += [like] * 4
    return _where(clauses), params


def conversation_page(found: list[ConversationRecord], limit: int,
                      end: ConversationKey | None) -> ConversationPage:
    """The first `limit` found, and where the next page starts: after the last shown if more
    were found, else after the window read, if it was full."""
    if len(found) > limit:
        last = found[limit - 1]
        return ConversationPage(found[:limit], (last.last_seen, last.chatbot_id, last.thread_id))
    return ConversationPage(found, end)


def _where(clauses: list[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


KEEP_KEY = ("INSERT INTO console_keys (name, secret, created_at) VALUES ({m}, {m}, {m})"
            " ON CONFLICT (name) DO NOTHING")
KEPT_KEY = "SELECT secret FROM console_keys WHERE name = {m}"
PAUSE = ("INSERT INTO paused_destinations (destination, paused_at) VALUES ({m}, {m})"
         " ON CONFLICT (destination) DO NOTHING")
RESUME = "DELETE FROM paused_destinations WHERE destination = {m}"
PAUSED = "SELECT destination, paused_at FROM paused_destinations ORDER BY destination"
# What the claims of both backends add: a paused destination's deliveries wait.
NOT_PAUSED = "d.destination NOT IN (SELECT destination FROM paused_destinations)"
EVENT_BODY = "SELECT body FROM events WHERE id = {m}"
