"""Jinja templates users can override: their folder first, the built-ins second (as `default:`)."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from bridge.errors import TemplateError
from bridge.events import dashboard_url

CUT_MARKER = "… [cut]"
SITEGPT_HOST = "sitegpt.ai"
# Markup characters get a backslash. A backslash itself becomes an entity (two backslashes are
# a line break) and a newline becomes that line break, so no visitor line starts a block.
_JIRA_ESCAPES = str.maketrans(
    {char: f"\\{char}" for char in "[]{}|*_+-^~?!#()"} | {"\\": "&#92;", "\n": "\\\\"}
)
_JIRA_BLOCK_START = re.compile(r"^([ \t]*)(h(?=[1-6]\.)|b(?=q\.))")
# A link target Slack cannot misread: http(s), nothing that ends the link or starts its label.
_LINK_SAFE = re.compile(r"https?://[^\x00-\x20\x7f|<>]+", re.IGNORECASE)
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NOT_DATE_TEXT = re.compile(r"[^0-9A-Za-z:.+-]+")
DATE_TEXT_LIMIT = 64  # of a date the filter cannot read; more is no longer a date
# Mattermost's markdown: every ASCII punctuation mark that can start markup gets a backslash.
_MATTERMOST_ESCAPES = str.maketrans({char: f"\\{char}" for char in "\\`*_{}[]()#+-.!|<>=$:"})
# A word joiner shows as nothing but ends a word: after "@" or "~" no mention or channel link
# can follow, and inside "http" or "www" no bare address is turned into a link.
WORD_JOINER = "\u2060"
_MATTERMOST_BREAKS = re.compile(r"([@~])|(?<=h)(ttps?)(?=\\?:)|(?<=w)(ww)(?=\\?\.)", re.IGNORECASE)
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
# What a Mattermost username is made of; the three that mention everyone are no member's.
_MATTERMOST_USERNAME = re.compile(r"[a-z0-9._-]+")
_MATTERMOST_EVERYONE = frozenset({"all", "channel", "here"})


def builtin_dir() -> Path:
    """Bundled templates: inside the installed package, or the repo's top-level folder."""
    packaged = Path(__file__).parent / "templates"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "templates"


def slack_escape(value: Any) -> str:
    """Escape SiteGPT text for Slack mrkdwn so it can neither mention anyone nor plant a link."""
    if value is None:
        return ""
    # Three replaces run many times faster than translate() on long text full of "<".
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def link_safe(url: Any) -> bool:
    """Whether `url` is http(s) with no "|", "<", ">", space, control or invisible character."""
    return isinstance(url, str) and _LINK_SAFE.fullmatch(url) is not None and all_visible(url)


def all_visible(text: str) -> bool:
    """Whether every character of `text` shows as itself: no bidi control (U+202E turns
    "gpj.exe" into "exe.jpg" on screen), zero-width or other format character, no line or
    paragraph separator, no space but ASCII's, no control, private or unassigned character."""
    return text.isascii() or not any(unicodedata.category(char)[0] in "CZ"
                                     for char in text if not char.isascii())


def slack_link(url: Any, label: str | None = None) -> str:
    """`<url|label>` for a safe URL; any other value as plain escaped text, never a link."""
    if not link_safe(url):
        text = slack_escape(url)
        return f"{slack_escape(label)}: {text}" if label and text else text
    target = slack_escape(url)
    return f"<{target}|{slack_escape(label)}>" if label else f"<{target}>"


def mattermost_text(value: Any) -> str:
    """Escape SiteGPT or Jira text for Mattermost's markdown: no mention (@all, @user), no
    channel link (~town-square), no link, image or autolinked address, no heading, table or
    code fence, no bidi control; what the sender wrote still reads the same."""
    if value is None:
        return ""
    text = _BIDI_CONTROLS.sub("", str(value)).translate(_MATTERMOST_ESCAPES)
    return _MATTERMOST_BREAKS.sub(_joined, text)


def _joined(match: re.Match[str]) -> str:
    if match[1]:
        return match[1] + WORD_JOINER
    return WORD_JOINER + (match[2] or match[3])


def mattermost_mention(username: Any, fallback: Any = None) -> str:
    """`@username` for what can only be one member's Mattermost username; anything else (a
    mention of everyone, markup, a display name) as inert text, or `fallback` when empty."""
    shown = "" if username is None else str(username)
    name = shown.removeprefix("@")  # Mattermost's events name a sender "@jane"
    if _MATTERMOST_USERNAME.fullmatch(name) and name not in _MATTERMOST_EVERYONE:
        return f"@{name}"
    return mattermost_text(shown or fallback)


def mattermost_link(url: Any, label: str | None = None) -> str:
    """`[label](url)` for a safe http(s) URL; any other value as inert text, never a link."""
    if not link_safe(url):
        text = mattermost_text(url)
        return f"{mattermost_text(label)}: {text}" if label and text else text
    # Brackets in the target would end it early: percent-encoded, they lead to the same place.
    target = url.replace("(", "%28").replace(")", "%29")
    return f"[{mattermost_text(label or url)}]({target})"


def mattermost_sitegpt_link(url: Any, label: str) -> str:
    """mattermost_link for a link into SiteGPT, labelled with its host when that is not
    SiteGPT's, so it cannot pose as SiteGPT."""
    host = link_host(url)
    if host is not None and not is_sitegpt_host(host):
        label = f"Open in {host}"
    return mattermost_link(url, label)


def sitegpt_link(url: Any, label: str) -> str:
    """slack_link for a link into SiteGPT: one whose host is not SiteGPT's (sitegpt.ai or a
    subdomain) is labelled with its host, so it cannot pose as SiteGPT."""
    host = link_host(url)
    if host is not None and not is_sitegpt_host(host):
        label = f"Open in {host}"
    return slack_link(url, label)


def link_host(url: Any) -> str | None:
    """The host a safe link leads to, or None for a value that is no link."""
    if not link_safe(url):
        return None
    try:
        return urlsplit(url).hostname or ""
    except ValueError:  # a malformed port or IPv6 address: no host it can be trusted with
        return ""


def is_sitegpt_host(host: str) -> bool:
    host = host.rstrip(".")
    return host == SITEGPT_HOST or host.endswith("." + SITEGPT_HOST)


def jira_escape(value: Any) -> str:
    """Escape SiteGPT text for Jira wiki markup: no links, macros, images or formatting."""
    if value is None:
        return ""
    text = _CONTROL_CHARS.sub("", str(value).replace("\r\n", "\n").replace("\r", "\n"))
    escaped = text.translate(_JIRA_ESCAPES)
    return _JIRA_BLOCK_START.sub(lambda match: f"{match[1]}&#{ord(match[2])};", escaped)


def cut(value: Any, limit: int, marker: str = CUT_MARKER) -> str:
    """At most `limit` characters, ending with a visible marker when something was cut."""
    text = "" if value is None else str(value)
    if len(text) <= limit:
        return text
    return text[: max(limit - len(marker), 0)] + marker


def format_date(value: Any, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    """An epoch number or ISO-8601 string as a readable UTC date; anything else as inert text."""
    if value is None or value == "":
        return ""
    moment = _utc_moment(value)
    return _inert_date(value) if moment is None else moment.strftime(fmt)


def _utc_moment(value: Any) -> datetime | None:
    """The UTC time `value` names, or None when it names none datetime can hold."""
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            # A naive time is read as the host's local time, as it always was.
            return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError, OSError):  # not a date, or out of datetime's range
        return None
    return None


def _inert_date(value: Any) -> str:
    """A date the filter cannot read, shown without what is markup in Slack or Jira.

    The filter's output goes into both without further escaping, so it keeps only what an
    ISO date is written with: a mention, a link or a macro cannot survive that.
    """
    return " ".join(_NOT_DATE_TEXT.sub(" ", str(value)[:DATE_TEXT_LIMIT]).split())


def slack_date(value: Any, token: str = "{date_short_pretty} {time}",
               fallback: str = "%Y-%m-%d %H:%M UTC") -> str:
    """An epoch number or ISO-8601 string as Slack's `<!date^...>`: each reader sees it in their
    own time zone (`token` is Slack's format), and clients that cannot see the UTC `fallback`.
    Anything that is not a time is shown as escaped text, never as a date."""
    moment = _moment(value)
    if moment is None:
        return slack_escape(value)
    seconds = int(moment.timestamp())
    return (f"<!date^{seconds}^{_TOKEN_UNSAFE.sub('', token)}|"
            f"{slack_escape(format_date(seconds, fallback))}>")


_TOKEN_UNSAFE = re.compile(r"[|<>^\x00-\x1f]")


def _moment(value: Any) -> datetime | None:
    """The time an epoch number or an ISO-8601 string names (UTC when it names no zone)."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str) and value:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _tojson(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=_undefined_fails)


def _undefined_fails(value: Any) -> Any:
    """Report a missing variable by name instead of "Undefined is not JSON serializable"."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class Templates:
    """Renders named templates in a sandbox with strict undefined variables."""

    def __init__(self, user_dir: Path | None = None,
                 folders: Mapping[str, Path] | None = None) -> None:
        """`folders`: each destination's built-in templates, found as "<prefix>/<file>"."""
        builtin: jinja2.BaseLoader = jinja2.FileSystemLoader(builtin_dir())
        if folders:
            plugins = {prefix: jinja2.FileSystemLoader(path) for prefix, path in folders.items()}
            builtin = jinja2.ChoiceLoader([builtin, jinja2.PrefixLoader(plugins, delimiter="/")])
        loaders: list[jinja2.BaseLoader] = []
        if user_dir is not None:
            loaders.append(jinja2.FileSystemLoader(user_dir))
        loaders += [jinja2.PrefixLoader({"default": builtin}, delimiter=":"), builtin]
        self.user_dir = user_dir
        self.env = SandboxedEnvironment(
            loader=jinja2.ChoiceLoader(loaders),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            mrkdwn=slack_escape, slack_link=slack_link, sitegpt_link=sitegpt_link,
            jira=jira_escape, cut=cut, mattermost_text=mattermost_text,
            mattermost_mention=mattermost_mention, mattermost_link=mattermost_link,
            mattermost_sitegpt_link=mattermost_sitegpt_link,
            date=format_date, tojson=_tojson)
        self.env.filters["slack_date"] = slack_date
        self.env.globals.update(dashboard_url=dashboard_url)
        # Lorem ipsum has no place in a message, and a large n only burns CPU.
        del self.env.globals["lipsum"]

    def names(self) -> list[str]:
        """Every template: the built-in set a user may override, and the user's own."""
        return sorted(self.env.list_templates(filter_func=lambda name: ":" not in name))

    def builtin_names(self) -> list[str]:
        """The templates the bridge brings, which a user's file of the same name replaces."""
        names = self.env.list_templates(filter_func=lambda name: name.startswith("default:"))
        return sorted(name.removeprefix("default:") for name in names if name.endswith(".j2"))

    def load(self, name: str) -> jinja2.Template:
        """The compiled template `name` (the user's if they have one), or TemplateError."""
        try:
            return self.env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise _syntax_error(name, exc) from exc
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(f"template not found: {exc.name}") from exc

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        """Render `name`, or raise TemplateError naming the file and line."""
        template = self.load(name)
        try:
            return template.render(context)
        except jinja2.TemplateSyntaxError as exc:  # in a template it extends or includes
            raise _syntax_error(name, exc) from exc
        except jinja2.TemplateNotFound as exc:
            where = self._where(name, exc)
            raise TemplateError(f"{where}: template not found: {exc.name}") from exc
        except Exception as exc:  # StrictUndefined, sandbox refusals, filter errors
            raise TemplateError(f"{self._where(name, exc)}: {exc}") from exc

    def render_json(self, name: str, context: Mapping[str, Any]) -> Any:
        """Render `name` and parse it as JSON, or raise TemplateError naming the template."""
        text = self.render(name, context)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise TemplateError(
                f"{name}: output is not valid JSON (line {exc.lineno}, column {exc.colno}): "
                f"{exc.msg}") from exc

    @staticmethod
    def _where(name: str, exc: BaseException) -> str:
        """The file and line of a render error: Jinja rewrites tracebacks to point there."""
        where = name
        trace = exc.__traceback__
        while trace is not None:
            if "__jinja_exception__" in trace.tb_frame.f_globals:
                where = f"{trace.tb_frame.f_code.co_filename}:{trace.tb_lineno}"
            trace = trace.tb_next
        return where


def _syntax_error(name: str, exc: jinja2.TemplateSyntaxError) -> TemplateError:
    return TemplateError(f"{exc.filename or name}:{exc.lineno}: {exc.message}")
