"""A fake Jira REST server on 127.0.0.1 for the real `jira` client: issues, comments and search."""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

Answer = tuple[int, Any, dict[str, str]]
NOT_AUTHENTICATED = "Client must be authenticated to access this resource."
SEARCH_GONE = ("The requested API has been removed. Please migrate to the /rest/api/3/search/jql "
               "API. A full migration guideline is available at https://developer.atlassian.com")


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it (header names lower-cased)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Scripted:
    """A canned answer (status 0: the real one) for the next requests, sent `stall` s late."""

    method: str
    path: str
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0
    times: int = 1


def basic_auth(email: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode()


def java_length(text: str) -> int:
    """A string's length as Jira (Java) counts it: in UTF-16 code units."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


class FakeJira:
    """Jira Cloud or Server/Data Center, as far as the bridge uses it; every request recorded."""

    def __init__(self, deployment: str = "Cloud", authorization: str = "",
                 projects: dict[str, list[str]] | None = None) -> None:
        self.deployment = deployment
        self.authorization = authorization
        self.projects = projects if projects is not None else {"SUP": ["Task", "Bug"]}
        self.issues: dict[str, dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self.scripts: list[Scripted] = []
        self._ids = itertools.count(10001)
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeJira:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def script(self, method: str, path: str, status: int = 200, body: Any = None,
               headers: dict[str, str] | None = None, stall: float = 0.0, times: int = 1) -> None:
        """Answer the next `times` requests to method + path this way (status 0: as usual)."""
        self.scripts.append(Scripted(method, path, status, body, headers or {}, stall, times))

    def add_issue(self, project: str = "SUP", labels: list[str] | None = None,
                  category: str = "new", summary: str = "earlier ticket") -> str:
        fields = {"project": {"key": project}, "issuetype": {"name": "Task"}, "summary": summary,
                  "description": "", "labels": labels or []}
        return self._create(fields, category)["key"]

    def close_issue(self, key: str) -> None:
        self.issues[key]["fields"]["status"] = _status("done")

    def calls(self, method: str | None = None, path: str = "") -> list[Recorded]:
        return [call for call in self.requests
                if (method is None or call.method == method) and call.path.startswith(path)]

    def created(self) -> list[dict[str, Any]]:
        return [call.body["fields"] for call in self.calls("POST", "/rest/api/2/issue")
                if call.path == "/rest/api/2/issue"]

    def comments(self, key: str) -> list[str]:
        return [comment["body"] for comment in self.issues[key]["comments"]]

    # What the handler calls, on the server's threads.

    def answer(self, call: Recorded) -> Answer:
        """Do what the request asks (unless scripted otherwise), then maybe stall the answer."""
        with self._lock:
            self.requests.append(call)
            scripted = self._take_script(call)
            if scripted is not None and scripted.status:
                answer: Answer = (scripted.status, scripted.body, scripted.headers)
            elif self.authorization and call.headers.get("authorization") != self.authorization:
                answer = 401, {"errorMessages": [NOT_AUTHENTICATED], "errors": {}}, {}
            else:
                answer = self._route(call)
        if scripted is not None and scripted.stall:
            self._release.wait(scripted.stall)
        return answer

    def _take_script(self, call: Recorded) -> Scripted | None:
        for scripted in self.scripts:
            if scripted.times > 0 and (scripted.method, scripted.path) == (call.method, call.path):
                scripted.times -= 1
                return scripted
        return None

    def _route(self, call: Recorded) -> Answer:
        for method, pattern, route in self._routes():
            match = re.fullmatch(pattern, call.path)
            if match and method == call.method:
                return route(call, *match.groups())
        return _error(404, f"no route for {call.method} {call.path}")

    def _routes(self) -> list[tuple[str, str, Callable[..., Answer]]]:
        api = r"/rest/api/2"
        return [
            ("GET", f"{api}/serverInfo", self._server_info),
            ("GET", f"{api}/myself", self._myself),
            ("GET", f"{api}/field", self._fields),
            ("GET", f"{api}/project/([^/]+)", self._project),
            ("POST", f"{api}/issue", self._create_issue),
            ("GET", f"{api}/issue/([^/]+)", self._issue),
            ("GET", f"{api}/issue/([^/]+)/comment", self._comments),
            ("POST", f"{api}/issue/([^/]+)/comment", self._add_comment),
            ("GET", f"{api}/issue/([^/]+)/transitions", self._transitions),
            ("POST", f"{api}/issue/([^/]+)/transitions", self._transition),
            ("GET", f"{api}/search", self._server_search),
            ("POST", f"{api}/search", self._server_search),
            ("GET", r"/rest/api/[23]/search/jql", self._cloud_search),
            ("POST", r"/rest/api/[23]/search/jql", self._cloud_search),
        ]

    def _server_info(self, call: Recorded) -> Answer:
        version = [1001, 0, 0] if self.deployment == "Cloud" else [9, 12, 0]
        return 200, {"baseUrl": self.url, "version": ".".join(map(str, version)),
                     "versionNumbers": version, "deploymentType": self.deployment}, {}

    def _myself(self, call: Recorded) -> Answer:
        return 200, {"displayName": "Support Bot User", "emailAddress": "bot@example.com",
                     "accountId": "5b10ac8d82e05b22cc7d4ef5", "name": "supportbot"}, {}

    def _fields(self, call: Recorded) -> Answer:
        names = ("status", "labels", "summary", "description")
        return 200, [{"id": name, "name": name.title(), "clauseNames": [name]}
                     for name in names], {}

    def _project(self, call: Recorded, key: str) -> Answer:
        if key not in self.projects:
            return _error(404, f"No project could be found with key '{key}'.")
        kinds = [{"id": str(n), "name": name} for n, name in enumerate(self.projects[key], 1)]
        return 200, {"id": "10000", "key": key, "name": f"{key} project", "issueTypes": kinds,
                     "self": f"{self.url}/rest/api/2/project/{key}"}, {}

    def _create_issue(self, call: Recorded) -> Answer:
        fields = call.body["fields"]
        problems = self._field_problems(fields)
        if problems:
            return 400, {"errorMessages": [], "errors": problems}, {}
        issue = self._create(fields, "new")
        return 201, {key: issue[key] for key in ("id", "key", "self")}, {}

    def _field_problems(self, fields: dict[str, Any]) -> dict[str, str]:
        project = fields.get("project", {}).get("key")
        if project not in self.projects:
            return {"project": "valid project is required"}
        if fields.get("issuetype", {}).get("name") not in self.projects[project]:
            return {"issuetype": "Specify a valid issue type"}
        summary = fields.get("summary", "")
        if java_length(summary) > 255 or "\n" in summary:
            return {"summary": "Summary must be less than 255 characters, on one line."}
        if java_length(fields.get("description", "")) > 32767:
            return {"description": "The entered text is too long."}
        if any(" " in label for label in fields.get("labels", [])):
            return {"labels": "A label cannot contain spaces."}
        return {}

    def _create(self, fields: dict[str, Any], category: str) -> dict[str, Any]:
        number = next(self._ids)
        key = f"{fields['project']['key']}-{number - 10000}"
        issue = {"id": str(number), "key": key, "self": f"{self.url}/rest/api/2/issue/{number}",
                 "fields": {**fields, "status": _status(category)}, "comments": []}
        self.issues[key] = issue
        return issue

    def _issue(self, call: Recorded, key: str) -> Answer:
        if key not in self.issues:
            return _error(404, "Issue does not exist or you do not have permission to see it.")
        return 200, _public(self.issues[key]), {}

    def _comments(self, call: Recorded, key: str) -> Answer:
        comments = self.issues[key]["comments"]
        return 200, {"startAt": 0, "maxResults": 50, "total": len(comments),
                     "comments": list(reversed(comments))}, {}

    def _add_comment(self, call: Recorded, key: str) -> Answer:
        if key not in self.issues:
            return _error(404, "Issue does not exist or you do not have permission to see it.")
        comments = self.issues[key]["comments"]
        comment = {"id": str(len(comments) + 1), "body": call.body["body"],
                   "self": f"{self.url}/rest/api/2/issue/{key}/comment/{len(comments) + 1}"}
        comments.append(comment)
        return 201, comment, {}

    def _transitions(self, call: Recorded, key: str) -> Answer:
        """Every ticket may go to each status category, each transition named after its status."""
        if key not in self.issues:
            return _error(404, "Issue does not exist or you do not have permission to see it.")
        return 200, {"transitions": [
            {"id": str(number), "name": status["name"], "to": status}
            for number, status in TRANSITIONS.items()]}, {}

    def _transition(self, call: Recorded, key: str) -> Answer:
        wanted = str((call.body or {}).get("transition", {}).get("id"))
        if key not in self.issues:
            return _error(404, "Issue does not exist or you do not have permission to see it.")
        if wanted not in {str(number) for number in TRANSITIONS}:
            return _error(400, f"Transition id '{wanted}' is not valid for this issue.")
        self.issues[key]["fields"]["status"] = TRANSITIONS[int(wanted)]
        return 204, None, {}

    def _server_search(self, call: Recorded) -> Answer:
        if self.deployment == "Cloud":
            return _error(410, SEARCH_GONE)
        found = self._search(_jql(call))
        return 200, {"startAt": 0, "maxResults": 50, "total": len(found), "issues": found}, {}

    def _cloud_search(self, call: Recorded) -> Answer:
        if self.deployment != "Cloud":
            return _error(404, "null for uri: " + call.path)
        return 200, {"issues": self._search(_jql(call)), "isLast": True}, {}

    def _search(self, jql: str) -> list[dict[str, Any]]:
        """The JQL the bridge sends: a label, maybe `statusCategory != Done`, newest first."""
        label = re.search(r'labels\s*=\s*"?([^"\s]+)"?', jql)
        open_only = re.search(r"statusCategory\s*!=\s*Done", jql, re.IGNORECASE)
        found = [issue for issue in reversed(self.issues.values())
                 if label and label[1] in issue["fields"]["labels"]
                 and not (open_only and issue["fields"]["status"]["statusCategory"]["key"]
                          == "done")]
        return [_public(issue) for issue in found]


def _status(category: str) -> dict[str, Any]:
    name = {"new": "To Do", "indeterminate": "In Progress", "done": "Done"}[category]
    return {"name": name, "statusCategory": {"key": category, "name": name}}


TRANSITIONS = {11: _status("new"), 21: _status("indeterminate"), 31: _status("done")}


def _public(issue: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in issue.items() if key != "comments"}


def _jql(call: Recorded) -> str:
    if isinstance(call.body, dict) and "jql" in call.body:
        return str(call.body["jql"])
    return call.query.get("jql", [""])[0]


def _error(status: int, message: str) -> Answer:
    return status, {"errorMessages": [message], "errors": {}}, {}


def _handler(fake: FakeJira) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            call = Recorded(method, parts.path, parse_qs(parts.query),
                            {name.lower(): value for name, value in self.headers.items()},
                            json.loads(raw) if raw else None)
            status, body, headers = fake.answer(call)
            payload = json.dumps(body).encode() if body is not None else b""
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (a timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
