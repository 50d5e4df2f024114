"""The console's routes under /console/: login, overview, deliveries, conversations, templates,
settings; every page server-rendered, every action a form POST with a CSRF token."""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlencode

import jinja2
from itsdangerous import BadSignature, URLSafeTimedSerializer
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from bridge.console.auth import LoginLimiter, Session, Sessions, trusted_user
from bridge.console.chart import WebhookHistory
from bridge.console.password import password_matches
from bridge.destinations import REGISTRY, status_lines, unfinished_lines
from bridge.destinations.base import sample_renderer
from bridge.destinations.plugin import Plugin
from bridge.errors import BridgeError, StoreError
from bridge.events import LEAD, InvalidEvent, parse_event
from bridge.redact import Redactor
from bridge.store import STATUSES, ConversationLink, DeliveryFilter
from bridge.template_check import check_templates, sample_events
from bridge.verdicts import destination_verdicts

if TYPE_CHECKING:
    from bridge.clock import Clock
    from bridge.destinations.base import Destination
    from bridge.metrics import Metrics
    from bridge.settings import Settings
    from bridge.store import Store
    from bridge.templating import Templates
    from bridge.worker import Worker


class Bridge(Protocol):
    """The parts of the running bridge (bridge.app.Bridge) the console shows and acts on."""

    settings: Settings
    store: Store
    templates: Templates
    destinations: dict[str, Destination]
    clock: Clock
    worker: Worker
    metrics: Metrics

    def listeners(self) -> list[str]: ...


HERE = Path(__file__).parent
ROOT = "/console/"
LOGIN_COOKIE = "console_login"
MAX_FORM_BYTES = 65_536
PAGE_SIZE = 50
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
Handler = Callable[["Console", Request, Session], Awaitable[Response]]


def when(moment: float | None) -> str:
    if not moment:
        return "-"
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = when
    return env


@dataclass
class Console:
    """What every page needs: the running bridge, its sessions, the login limit, the pages."""

    bridge: Bridge
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    history: WebhookHistory = field(default_factory=WebhookHistory)
    env: jinja2.Environment = field(default_factory=_environment)
    _sessions: Sessions | None = None

    @property
    def settings(self) -> Any:
        return self.bridge.settings.console

    async def sessions(self) -> Sessions:
        """Signed with the store's key, made by whichever replica asks first, kept by all."""
        if self._sessions is None:
            key = await self.bridge.store.console_key("session", secrets.token_urlsafe(32))
            self._sessions = Sessions(key, self.settings.session_idle.total_seconds())
        return self._sessions

    def page(self, template: str, request: Request, session: Session | None, status: int = 200,
             **context: Any) -> HTMLResponse:
        body = self.env.get_template(template).render(
            root=ROOT, session=session, notice=request.query_params.get("notice"), **context)
        return HTMLResponse(body, status, headers=SECURITY_HEADERS)

    def now(self) -> float:
        return self.bridge.clock.now()


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form, bounded; the last value of a repeated field wins."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _see(path: str, notice: str = "") -> RedirectResponse:
    target = ROOT + path + (f"?{urlencode({'notice': notice})}" if notice else "")
    return RedirectResponse(target, 303, headers=SECURITY_HEADERS)


def _refused(status: int, text: str) -> Response:
    return Response(text, status, media_type="text/plain", headers=SECURITY_HEADERS)


def signed_in(handler: Handler, post: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """Run `handler` for a signed-in operator: a page sends others to log in, a POST is
    refused (401 without a session, 403 without its CSRF token); the session is renewed."""

    async def endpoint(request: Request) -> Response:
        console: Console = request.app.state.console
        sessions = await console.sessions()
        session = _session(console, request, sessions)
        if session is None:
            return _refused(401, "log in first\n") if post else _see("login")
        if post:
            form = await read_form(request)
            if not session.csrf_matches(form.get("csrf", "")):
                return _refused(403, "this form has expired: reload the page and try again\n")
            request.state.form = form
        console.history.sample(console.bridge.metrics, console.now())
        response = await handler(console, request, session)
        if not getattr(request.state, "ended", False):
            sessions.keep(response, session, request)
        return response

    return endpoint


def _session(console: Console, request: Request, sessions: Sessions) -> Session | None:
    """The cookie's session; a login proxy's user, where trusted, is signed in instead of
    another (someone else now at this browser)."""
    found = sessions.read(request)
    user = trusted_user(request, console.settings.trusted_user_header)
    if user and (found is None or found.user != user):
        return sessions.start(user)
    return found


# Logging in and out ---------------------------------------------------------------------------

def _login_signer(sessions: Sessions) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(sessions.key, salt="console-login")


async def login_page(request: Request) -> Response:
    console: Console = request.app.state.console
    sessions = await console.sessions()
    if sessions.read(request):
        return _see("")
    return _login_form(console, request, sessions)


def _login_form(console: Console, request: Request, sessions: Sessions, error: str = "",
                status: int = 200) -> Response:
    """The form carries a signed copy of a random cookie: a login POST needs both (CSRF)."""
    nonce = secrets.token_urlsafe(16)
    response = console.page("login.html", request, None, status, title="Log in", error=error,
                            login_token=_login_signer(sessions).dumps(nonce))
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, path=ROOT, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


async def login(request: Request) -> Response:
    console: Console = request.app.state.console
    sessions = await console.sessions()
    address = request.client.host if request.client else "unknown"
    if console.limiter.blocked(address):
        return _refused(429, "too many failed logins: wait a minute\n")
    form = await read_form(request)
    if not _login_token_matches(sessions, form.get("csrf", ""), request.cookies.get(LOGIN_COOKIE)):
        return _refused(403, "this form has expired: reload the page and try again\n")
    if not password_matches(console.settings.password_hash, form.get("password", "")):
        console.limiter.failed(address)
        return _login_form(console, request, sessions, "Wrong password.", 401)
    response = _see("")
    sessions.keep(response, sessions.start("operator"), request)
    response.delete_cookie(LOGIN_COOKIE, path=ROOT)
    return response


def _login_token_matches(sessions: Sessions, token: str, cookie: str | None) -> bool:
    try:
        nonce = _login_signer(sessions).loads(token, max_age=3600)
    except BadSignature:
        return False
    return cookie is not None and hmac.compare_digest(str(nonce), cookie)


async def logout(console: Console, request: Request, session: Session) -> Response:
    request.state.ended = True
    response = _see("login")
    (await console.sessions()).end(response, request)
    return response


# Overview and destinations ----------------------------------------------------------------------

async def overview(console: Console, request: Request, session: Session) -> Response:
    store = console.bridge.store
    try:
        await store.check_writable()
        readiness, ready = "ready", True
    except StoreError as exc:
        readiness, ready = f"unavailable: {exc}", False
    lines = await store.destination_summary(list(console.bridge.destinations), console.now())
    metrics, now = console.bridge.metrics, console.now()
    return console.page("overview.html", request, session, title="Overview", ready=ready,
                        readiness=readiness, destinations=lines, paused=await store.paused(),
                        chart=console.history.chart(metrics, now),
                        refusals=console.history.refusals(metrics, now),
                        pacing=pacing(console), listening=listening(console))


@dataclass(frozen=True)
class Pacing:
    """How far behind a destination runs, by a gauge its plugin declares."""

    destination: str
    metric: str
    seconds: float


def pacing(console: Console) -> list[Pacing]:
    """Each running destination's pacing gauges, as the metrics registry reads them now."""
    return [Pacing(name, metric, value) for name, metric, value in gauges(
        console, console.bridge.destinations, lambda plugin: plugin.pacing) if value is not None]


def gauges(console: Console, names: Iterable[str],
           declared: Callable[[Plugin], Iterable[str]]) -> list[tuple[str, str, float | None]]:
    """(plugin, gauge, its value now) for each gauge these plugins declare."""
    registry = console.bridge.metrics.registry
    return [(name, metric, registry.get_sample_value(metric)) for name in names
            if (plugin := REGISTRY.get(name)) is not None for metric in declared(plugin)]


@dataclass(frozen=True)
class Listening:
    """Whether a plugin's listener (Mattermost's WebSocket) listens now, by its gauge."""

    destination: str
    metric: str
    listening: bool


def listening(console: Console) -> list[Listening]:
    """Each running listener, as the gauge its plugin declares reads now."""
    settings = console.bridge.settings
    return [Listening(name, metric, value == 1) for name, metric, value in gauges(
        console, console.bridge.listeners(),
        lambda plugin: [plugin.listening] if plugin.listening and plugin.replies(settings)
        else [])]


def _pausing(pause: bool) -> Handler:
    async def change(console: Console, request: Request, session: Session) -> Response:
        name = request.path_params["name"]
        if name not in console.bridge.destinations:
            return _refused(404, f"no destination {name}\n")
        store = console.bridge.store
        if pause:
            await store.pause(name, console.now())
        else:
            await store.resume(name)
            console.bridge.worker.wake()
        return _see("", f"{name}: {'paused' if pause else 'resumed'}")

    return change


# Deliveries -------------------------------------------------------------------------------------

FILTER_KEYS = ("status", "destination", "conversation", "since", "until", "error")


def delivery_filter(values: Any) -> DeliveryFilter:
    """The filter from a query string or form; times are the browser's UTC datetime-local."""
    return DeliveryFilter(
        status=values.get("status", "") if values.get("status") in STATUSES else "",
        destination=values.get("destination", ""), conversation=values.get("conversation", ""),
        since=_moment(values.get("since", "")), until=_moment(values.get("until", "")),
        error=values.get("error", ""))


def _moment(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() if text else None
    except ValueError:
        return None


def _query(values: Any) -> list[tuple[str, str]]:
    return [(key, values[key]) for key in FILTER_KEYS if values.get(key)]


async def deliveries(console: Console, request: Request, session: Session) -> Response:
    params = request.query_params
    matching = delivery_filter(params)
    before = int(params["before"]) if params.get("before", "").isdigit() else None
    rows = await console.bridge.store.delivery_page(matching, before, PAGE_SIZE + 1)
    older = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        older = f"{ROOT}deliveries?{urlencode([*_query(params), ('before', rows[-1].id)])}"
    return console.page("deliveries.html", request, session, title="Deliveries", rows=rows,
                        f=matching, statuses=STATUSES, query=_query(params), older=older,
                        destination_names=list(console.bridge.destinations),
                        since=params.get("since", ""), until=params.get("until", ""))


async def delivery(console: Console, request: Request, session: Session) -> Response:
    store = console.bridge.store
    delivery_id = int(request.path_params["id"])
    found = await store.deliveries(ids=[delivery_id], limit=1)
    if not found:
        return console.page("error.html", request, session, 404, title="Not found",
                            message=f"No delivery {delivery_id}.")
    row = found[0]
    body = await _event_body(console, row.event_id)
    preview, note = _preview(console, row.destination, row.kind, body)
    chatbot_id, _, thread_id = row.ordering_key.partition("/")
    record = await store.conversation(chatbot_id, thread_id)
    return console.page("delivery.html", request, session, title=f"Delivery {row.id}", row=row,
                        attempts=await store.attempts(row.id, limit=100), preview=preview,
                        preview_note=note, body=_pretty(body),
                        links=shown_links(console, record.links if record else ()))


async def _event_body(console: Console, event_id: int) -> str:
    return await console.bridge.store.event_body(event_id) or ""


def _pretty(body: str) -> str:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body


def _preview(console: Console, destination: str, kind: str,
             body: str) -> tuple[dict[str, str], str]:
    """What the destination would send for this event now, through its render_samples."""

    target = console.bridge.destinations.get(destination)
    if target is None or (render := sample_renderer(target)) is None:
        return {}, f"{destination} cannot show what it sends."
    try:
        event = parse_event(kind, json.loads(body))
        return render({"this event": event}) or {}, "Nothing: it does not take this event."
    except (InvalidEvent, ValueError, BridgeError) as exc:
        return {}, f"Cannot render it: {exc}"


def _one(action: str) -> Handler:
    async def act(console: Console, request: Request, session: Session) -> Response:
        delivery_id = int(request.path_params["id"])
        count = await _apply(console, action, DeliveryFilter(), [delivery_id])
        verb = "requeued" if action == "retry" else "cancelled"
        return _see(f"deliveries/{delivery_id}",
                    f"{verb}" if count else f"nothing to do: not {_untouched(action)}")

    return act


def _untouched(action: str) -> str:
    return "finished" if action == "retry" else "waiting, or a worker holds it now"


async def _apply(console: Console, action: str, matching: DeliveryFilter,
                 ids: Sequence[int]) -> int:
    store = console.bridge.store
    if action == "retry":
        count = await store.retry_matching(matching, ids, console.now())
        console.bridge.worker.wake()
        return count
    return await store.cancel_matching(matching, ids, console.now())


def _bulk(action: str) -> Handler:
    """Everything the filter matches, after a page that says how many."""

    async def act(console: Console, request: Request, session: Session) -> Response:
        form = request.state.form
        matching = delivery_filter(form)
        if form.get("confirmed") != "yes":
            count = await console.bridge.store.count_matching(matching)
            described = ", ".join(f"{key} {value}" for key, value in _query(form)) or "all"
            return console.page("confirm.html", request, session, title=f"{action.title()}?",
                                count=count, action=action, query=_query(form),
                                described=described)
        count = await _apply(console, action, matching, ())
        verb = "requeued" if action == "retry" else "cancelled"
        query = urlencode([*_query(form), ("notice", f"{verb} {count}")])
        return RedirectResponse(f"{ROOT}deliveries?{query}", 303, headers=SECURITY_HEADERS)

    return act


# Conversations, templates, settings -------------------------------------------------------------

async def conversations(console: Console, request: Request, session: Session) -> Response:
    """Newest first, a page at a time; a search matches ids, and each destination's link
    (Slack's names the visitor: name and email)."""
    params = request.query_params
    q = params.get("q", "").strip()
    found = await console.bridge.store.conversation_page(q, _conversation_key(params),
                                                         PAGE_SIZE)
    older = None
    if found.older is not None:
        seen, chatbot_id, thread_id = found.older
        older = f"{ROOT}conversations?" + urlencode(
            [*([("q", q)] if q else []), ("seen", repr(seen)), ("chatbot", chatbot_id),
             ("thread", thread_id)])
    return console.page("conversations.html", request, session, title="Conversations",
                        records=found.records, q=q, older=older)


def _conversation_key(params: Any) -> tuple[float, str, str] | None:
    """Where a page starts: after the conversation of the previous page's link."""
    try:
        return float(params["seen"]), params["chatbot"], params["thread"]
    except (KeyError, ValueError):
        return None


async def conversation(console: Console, request: Request, session: Session) -> Response:
    chatbot_id, thread_id = request.path_params["chatbot"], request.path_params["thread"]
    store = console.bridge.store
    record = await store.conversation(chatbot_id, thread_id)
    if record is None:
        return console.page("error.html", request, session, 404, title="Not found",
                            message=f"No conversation {chatbot_id}/{thread_id}.")
    return console.page("conversation.html", request, session,
                        title=f"Conversation {chatbot_id}/{thread_id}", record=record,
                        links=shown_links(console, record.links),
                        visitor=_known(record.links, "visitor"),
                        ticket=_known(record.links, "ticket"),
                        leads=await _leads_of(console, f"{chatbot_id}/{thread_id}"),
                        transcript=await store.transcript(chatbot_id, thread_id))


def _known(links: Sequence[ConversationLink], key: str) -> dict[str, Any] | None:
    """What a chat destination keeps of the conversation under `key` (its visitor, its
    ticket and the ticket's status), from the first that keeps one."""
    for link in links:
        value = link.state.get(key)
        if isinstance(value, dict) and value:
            return value
    return None


async def _leads_of(console: Console, conversation: str) -> list[dict[str, Any]]:
    """The lead details captured in this conversation (leads that name their thread)."""
    rows = await console.bridge.store.delivery_page(DeliveryFilter(conversation=conversation),
                                                    None, 200)
    leads = []
    for event_id in dict.fromkeys(row.event_id for row in rows if row.kind == LEAD):
        body = await _event_body(console, event_id)
        details = json.loads(body).get("data", {}).get("leadDetails") if body else None
        if isinstance(details, dict):
            leads.append(details)
    return leads


@dataclass(frozen=True)
class Shown:
    """A destination's link to a conversation as a page shows it: its handle, and a URL
    where the plugin says how to open it."""

    destination: str
    text: str
    url: str | None


def shown_links(console: Console, links: Sequence[ConversationLink]) -> list[Shown]:
    found = []
    for link in links:
        plugin = REGISTRY.get(link.destination)
        url = plugin.link(console.bridge.settings, link.state) \
            if plugin is not None and plugin.link is not None else None
        found.append(Shown(link.destination, link.ref or json.dumps(link.state), url))
    return found


@dataclass(frozen=True)
class Preview:
    """A destination's rendered samples: each body, and as HTML where its plugin draws it."""

    name: str
    rendered: dict[str, str]
    error: str = ""
    pictures: dict[str, Markup] = field(default_factory=dict)


RECENT_EVENTS = 20  # the recent events the templates page offers to render


async def templates(console: Console, request: Request, session: Session) -> Response:
    """Every destination's templates rendered against the samples, or a recent real event."""
    recent = await _recent_events(console)
    picked, samples, problem = await _picked_samples(console, request.query_params.get("event"))
    previews = [] if problem is None else [Preview("event", {}, problem)]
    for name, destination in console.bridge.destinations.items():
        render = sample_renderer(destination)
        if render is None:
            continue
        try:
            rendered = render(samples) or {}
        except BridgeError as exc:
            previews.append(Preview(name, {}, str(exc)))
            continue
        previews.append(Preview(name, rendered, pictures=_pictures(name, rendered)))
    return console.page("templates.html", request, session, title="Templates",
                        previews=previews, files=_template_files(console), recent=recent,
                        picked=picked)


async def _recent_events(console: Console) -> list[tuple[int, str, str]]:
    """(event id, kind, conversation) of the latest events, newest first, each once."""
    rows = await console.bridge.store.delivery_page(DeliveryFilter(), None, RECENT_EVENTS * 4)
    seen: dict[int, tuple[int, str, str]] = {}
    for row in rows:
        seen.setdefault(row.event_id, (row.event_id, row.kind, row.ordering_key))
    return list(seen.values())[:RECENT_EVENTS]


async def _picked_samples(console: Console, picked: str | None,
                          ) -> tuple[int | None, dict[str, Any], str | None]:
    """The event to render (its id, {label: event}), or the samples; a problem to show."""
    if not picked:
        return None, sample_events(), None
    if not picked.isdigit():
        return None, sample_events(), f"not an event id: {picked}"
    event_id = int(picked)
    body = await console.bridge.store.event_body(event_id)
    if body is None:
        return event_id, sample_events(), f"event {event_id} is no longer kept"
    try:
        decoded = json.loads(body)
        return event_id, {f"event {event_id}": parse_event(decoded["event"], decoded)}, None
    except (InvalidEvent, KeyError, TypeError, ValueError) as exc:
        return event_id, sample_events(), f"event {event_id} cannot be rendered: {exc}"


def _pictures(name: str, rendered: dict[str, str]) -> dict[str, Markup]:
    """Each body as its plugin's preview draws it (escaped there), where it has one."""
    plugin = REGISTRY.get(name)
    if plugin is None or plugin.preview is None:
        return {}
    drawn = {label: plugin.preview(body) for label, body in rendered.items()}
    return {label: picture for label, picture in drawn.items() if picture is not None}


def _template_files(console: Console) -> list[tuple[str, str]]:
    """Each template and where it comes from: the user's folder (an override) or built in."""
    found = []
    templates = console.bridge.templates
    for name in templates.names():
        try:
            filename = templates.load(name).filename or "?"
        except Exception as exc:  # a broken override: its error names file and line
            found.append((name, str(exc)))
            continue
        user = templates.user_dir is not None and Path(filename).is_relative_to(
            templates.user_dir)
        found.append((name, f"override: {filename}" if user else "built in"))
    return found


@dataclass(frozen=True)
class Line:
    """One line of what `check` says, without its calls to the destinations."""

    text: str
    ok: bool = True
    fix: str = ""


async def settings_page(console: Console, request: Request, session: Session) -> Response:
    return await _settings_view(console, request, session, None)


async def test_credentials(console: Console, request: Request, session: Session) -> Response:
    """Each destination's credentials test, as `check` runs it: a call to each service."""
    settings = console.bridge.settings
    redact = Redactor.for_settings(settings)
    found = await destination_verdicts(console.bridge.destinations, settings)
    lines = [Line(redact(verdict.line), verdict.ok, redact(verdict.fix)) for verdict in found]
    return await _settings_view(console, request, session, lines)


async def _settings_view(console: Console, request: Request, session: Session,
                         credentials: list[Line] | None) -> Response:
    settings = console.bridge.settings
    lines = [Line(f"webhooks.{name}: FAILED: no token, so it answers 503", False)
             for name in settings.unconfigured_endpoints()]
    lines += [Line(text, False) for text in unfinished_lines(settings)]
    report = check_templates(console.bridge.templates, console.bridge.destinations)
    lines += [Line(text, "FAILED" not in text) for text in report.lines(settings.templates.dir)]
    lines += [Line(text) for text in status_lines(settings)]
    lines.append(await _store_line(console))
    dumped = settings.model_dump(mode="json")
    dumped["console"]["password_hash"] = "(set)"  # a hash, yet no help to anyone reading it
    shown = json.dumps(dumped, indent=2, default=str)
    return console.page("settings.html", request, session, title="Settings", verdicts=lines,
                        settings=shown, credentials=credentials)


async def _store_line(console: Console) -> Line:
    try:
        info = await console.bridge.store.info()
    except StoreError as exc:
        return Line(f"store: FAILED: {exc}", False)
    return Line(f"store: ok: {info.backend} at {info.location}, schema version "
                f"{info.schema_version}")


# Routes -----------------------------------------------------------------------------------------

def console_routes(bridge: Bridge) -> list[BaseRoute]:
    """Mounted at /console/ when [console] password_hash is set; otherwise nothing (404)."""
    if not bridge.settings.console.enabled:
        return []
    routes: list[BaseRoute] = [
        Route("/", signed_in(overview)),
        Route("/login", login_page),
        Route("/login", login, methods=["POST"]),
        Route("/logout", signed_in(logout, post=True), methods=["POST"]),
        Route("/destinations/{name}/pause", signed_in(_pausing(True), post=True),
              methods=["POST"]),
        Route("/destinations/{name}/resume", signed_in(_pausing(False), post=True),
              methods=["POST"]),
        Route("/deliveries", signed_in(deliveries)),
        Route("/deliveries/retry", signed_in(_bulk("retry"), post=True), methods=["POST"]),
        Route("/deliveries/cancel", signed_in(_bulk("cancel"), post=True), methods=["POST"]),
        Route("/deliveries/{id:int}", signed_in(delivery)),
        Route("/deliveries/{id:int}/retry", signed_in(_one("retry"), post=True),
              methods=["POST"]),
        Route("/deliveries/{id:int}/cancel", signed_in(_one("cancel"), post=True),
              methods=["POST"]),
        Route("/conversations", signed_in(conversations)),
        Route("/conversations/{chatbot}/{thread:path}", signed_in(conversation)),
        Route("/templates", signed_in(templates)),
        Route("/settings", signed_in(settings_page)),
        Route("/settings/credentials", signed_in(test_credentials, post=True),
              methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="console-static"),
    ]
    return [Mount("/console", routes=routes)]


def install(app: Any, bridge: Bridge) -> None:
    """Give the console's pages the bridge they show."""
    console = Console(bridge)
    console.history.start(bridge.clock.now())
    app.state.console = console
