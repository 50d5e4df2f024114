"""`[store] url` as a libpq URI: whether libpq takes it, where it points, and without passwords."""

from __future__ import annotations

from bridge.store.masking import SECRET_PARAMETER, masked_store_url, scrub


def check_postgres_url(url: str) -> str:
    """`url` if libpq itself can parse it; otherwise ValueError saying why, password masked."""
    try:
        parameters = _libpq_parameters(url)
    except Exception as exc:  # libpq's ProgrammingError: its text may quote the url
        raise ValueError(f"not a valid PostgreSQL URI ({masked_store_url(url)}): "
                         f"{scrub(str(exc), url)}") from None
    if not parameters.get("dbname"):
        raise ValueError(f"name the database in the URI: {masked_store_url(url)} has no /DBNAME")
    return url


def server_address(url: str) -> str:
    """host:port/dbname, for logs and `check`: what was reached, never who with what."""
    parameters = _libpq_parameters(url)
    host = parameters.get("host") or "localhost"
    port = parameters.get("port") or "5432"
    # Scrubbed: libpq may have cut a password with a bare "/" or "@" into host or port.
    return scrub(f"{host}:{port}/{parameters.get('dbname')}", url)


def without_password(url: str) -> str:
    """The URI with every password left out, for a command line that takes it from PGPASSWORD."""
    scheme, _, rest = url.partition("://")
    user_info, at, hosts = rest.rpartition("@")
    if at:
        rest = f"{user_info.split(':', 1)[0]}@{hosts}"
    base, _, query = rest.partition("?")
    kept = SECRET_PARAMETER.sub("", f"&{query}").lstrip("&")
    return f"{scheme}://{base}" + (f"?{kept}" if kept else "")


def _libpq_parameters(url: str) -> dict[str, object]:
    # Imported here: loading the driver takes a noticeable part of a second, which a bridge
    # on SQLite should not spend at start-up.
    from psycopg import conninfo

    return dict(conninfo.conninfo_to_dict(url))
