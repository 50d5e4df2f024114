"""`[store] url` as a libpq URI: whether libpq takes it, and how to show it masked."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "**********"  # as pydantic prints a SecretStr
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def check_postgres_url(url: str) -> str:
    """`url` if libpq itself can parse it; otherwise ValueError saying why, password masked."""
    try:
        parameters = _libpq_parameters(url)
    except Exception as exc:  # libpq's ProgrammingError: its text may quote the url
        raise ValueError(f"not a valid PostgreSQL URI ({masked_url(url)}): "
                         f"{scrub(str(exc), url)}") from None
    if not parameters.get("dbname"):
        raise ValueError(f"name the database in the URI: {masked_url(url)} has no /DBNAME")
    return url


def masked_url(url: str) -> str:
    """The URI with its password (in the user part or as ?password=) replaced by the mask."""
    parts = urlsplit(url)
    netloc = parts.netloc
    user, at, hosts = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.split(':', 1)[0]}:{MASK}@{hosts}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    shown = [(key, MASK if key in SECRET_PARAMETERS else value) for key, value in query]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(shown, safe="*"),
                       parts.fragment))


def passwords_of(url: str) -> set[str]:
    """Every password the URI carries, as written and as decoded."""
    parts = urlsplit(url)
    found = {value for key, value in parse_qsl(parts.query) if key in SECRET_PARAMETERS}
    if parts.password:
        found |= {parts.password, unquote(parts.password), quote(unquote(parts.password))}
    return {secret for secret in found if secret}


def scrub(text: str, url: str) -> str:
    """`text` (a driver's error) on one line, the url's passwords masked wherever they appear."""
    text = " ".join(text.split()).replace(url, masked_url(url))
    for secret in sorted(passwords_of(url), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def server_address(url: str) -> str:
    """host:port/dbname, for logs and `check`: what was reached, never who with what."""
    parameters = _libpq_parameters(url)
    host = parameters.get("host") or "localhost"
    port = parameters.get("port") or "5432"
    return f"{host}:{port}/{parameters.get('dbname')}"


def without_password(url: str) -> str:
    """The URI with every password left out, for a command line that takes it from PGPASSWORD."""
    parts = urlsplit(url)
    user, at, hosts = parts.netloc.rpartition("@")
    netloc = f"{user.split(':', 1)[0]}@{hosts}" if at else parts.netloc
    query = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True)
             if key not in SECRET_PARAMETERS]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))


def _libpq_parameters(url: str) -> dict[str, object]:
    # Imported here: loading the driver takes a noticeable part of a second, which a bridge
    # on SQLite should not spend at start-up.
    from psycopg import conninfo

    return conninfo.conninfo_to_dict(url)
