"""Who may use the console: signed session cookies, CSRF tokens, and a limit on failed logins."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from bridge.server import FROM_PROXY

COOKIE = "console_session"
KEY_NAME = "console-session"  # the store keeps the key under this name, for every replica
PATH = "/console/"
FAILURES_ALLOWED = 5
FAILURE_WINDOW = 60.0


@dataclass(frozen=True)
class Session:
    """A signed-in operator: their name and the token every form of theirs carries."""

    user: str
    csrf: str

    def csrf_matches(self, presented: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), presented.encode())


@dataclass
class Sessions:
    """Sessions live in a cookie signed with the store's key; they end after `idle` seconds
    without a request, since every answer signs the cookie anew."""

    key: str
    idle: float

    def __post_init__(self) -> None:
        self._signer = URLSafeTimedSerializer(self.key, salt="console-session")

    def start(self, user: str) -> Session:
        return Session(user, secrets.token_urlsafe(24))

    def read(self, request: Request) -> Session | None:
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return None
        try:
            data: Any = self._signer.loads(cookie, max_age=int(self.idle))
            return Session(str(data["user"]), str(data["csrf"]))
        except (BadSignature, KeyError, TypeError):
            return None

    def keep(self, response: Response, session: Session, request: Request) -> None:
        response.set_cookie(
            COOKIE, self._signer.dumps({"user": session.user, "csrf": session.csrf}),
            max_age=int(self.idle), path=PATH, httponly=True, samesite="strict",
            secure=request.url.scheme == "https")

    def end(self, response: Response, request: Request) -> None:
        response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")


def trusted_user(request: Request, header: str | None) -> str | None:
    """The user a login proxy names, believed only when the request came from that proxy."""
    if not header or not request.scope.get(FROM_PROXY):
        return None
    return request.headers.get(header) or None


@dataclass
class LoginLimiter:
    """A few failed logins a minute per client address; past that, 429 until they age out."""

    allowed: int = FAILURES_ALLOWED
    window: float = FAILURE_WINDOW
    _failures: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def blocked(self, address: str, now: float | None = None) -> bool:
        return self._count(address, self._now(now)) >= self.allowed

    def failed(self, address: str, now: float | None = None) -> None:
        now = self._now(now)
        self._count(address, now)
        self._failures[address].append(now)

    def _count(self, address: str, now: float) -> int:
        """Failures of `address` within the window; older ones (and idle addresses) forgotten."""
        failures = self._failures.get(address)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if failures is not None and not failures:
            del self._failures[address]
        return len(failures or ())

    @staticmethod
    def _now(now: float | None) -> float:
        return time.monotonic() if now is None else now
