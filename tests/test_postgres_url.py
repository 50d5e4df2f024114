"""A PostgreSQL store url is shown, logged and quoted in errors with every password masked."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from bridge.errors import StoreError
from bridge.redact import Redactor
from bridge.store.postgres.url import check_postgres_url, server_address, without_password
from bridge.store.url import masked_store_url as masked_url
from bridge.store.url import scrub, store_scheme, store_url_secrets

URL = "postgresql://bridge:p%40ss@db.internal:5433/bridge?sslmode=require&sslpassword=key"


@pytest.mark.parametrize(("url", "shown"), [
    (URL, "postgresql://bridge:**********@db.internal:5433/bridge"
          "?sslmode=require&sslpassword=**********"),
    ("postgresql://bridge@db/bridge", "postgresql://bridge@db/bridge"),
    ("postgres://db/bridge?password=pw", "postgres://db/bridge?password=**********"),
    ("postgresql://u:pw@h1:5432,h2:5432/bridge", "postgresql://u:**********@h1:5432,h2:5432/bridge"),
])
def test_masked_url_hides_every_password_and_keeps_the_rest(url, shown):
    assert masked_url(url) == shown


def test_scrub_masks_the_password_as_written_and_as_decoded():
    error = f"could not connect to {URL}: password p@ss (p%40ss) with key refused"
    scrubbed = scrub(error, URL)
    assert "p@ss" not in scrubbed and "p%40ss" not in scrubbed and " key " not in scrubbed
    assert masked_url(URL) in scrubbed


def test_without_password_is_a_command_line_url_for_pgpassword():
    assert without_password(URL) == "postgresql://bridge@db.internal:5433/bridge?sslmode=require"


def test_server_address_names_host_port_and_database_only():
    assert server_address(URL) == "db.internal:5433/bridge"
    assert server_address("postgresql:///bridge") == "localhost:5432/bridge"


@pytest.mark.parametrize("url", ["postgresql://u:pw@db/bridge?nosuchoption=1",
                                 "postgresql://u:pw@db"])
def test_a_uri_libpq_refuses_is_refused_without_its_password(url):
    with pytest.raises(ValueError) as error:
        check_postgres_url(url)
    assert "pw" not in str(error.value).replace("postgresql", "")


# Passwords a parser cuts in pieces: bare @ : / # ? &, a bad percent-escape, ?password=.
ODD_PASSWORDS = [
    ("postgresql://bridge:Sec@retPW99@127.0.0.1:1/bridge", ("Sec", "retPW99")),
    ("postgresql://bridge:Sec:retPW99@127.0.0.1:1/bridge", ("Sec", "retPW99")),
    ("postgresql://bridge:Sec/retPW99@127.0.0.1:1/bridge", ("Sec", "retPW99")),
    ("postgresql://bridge:Sec#retPW99@127.0.0.1:1/bridge", ("Sec", "retPW99")),
    ("postgresql://bridge:Sec?retPW99@127.0.0.1:1/bridge", ("Sec", "retPW99")),
    ("postgresql://bridge:Sec%40ret%ZZPW99@127.0.0.1:1/bridge", ("Sec", "ret", "ZZPW99")),
    ("postgresql://127.0.0.1:1/bridge?password=Sec&retPW99", ("Sec", "retPW99")),
    ("postgresql://127.0.0.1:1/bridge?sslpassword=Sec%20retPW99&sslmode=require",
     ("Sec", "retPW99")),
    ("mysql://bridge:Sec@retPW99@127.0.0.1/bridge", ("Sec", "retPW99")),
]


def _shows_a_piece(text: str, pieces: tuple[str, ...]) -> bool:
    return any(piece in text for piece in pieces)


@pytest.mark.parametrize(("url", "pieces"), ODD_PASSWORDS)
def test_no_piece_of_an_odd_password_is_shown_masked_or_refused(url, pieces):
    assert not _shows_a_piece(masked_url(url), pieces)
    assert not _shows_a_piece(without_password(url), pieces)
    try:
        store_scheme(url)
    except StoreError as refused:
        assert not _shows_a_piece(str(refused), pieces)


@pytest.mark.parametrize(("url", "pieces"), ODD_PASSWORDS[:5])
async def test_no_piece_of_an_odd_password_is_in_a_failed_connection_scrubbed(url, pieces):
    with pytest.raises(psycopg.Error) as failed:
        await psycopg.AsyncConnection.connect(f"{url}?connect_timeout=2")
    assert not _shows_a_piece(scrub(str(failed.value), url), pieces)


@pytest.mark.parametrize(("url", "pieces"), ODD_PASSWORDS)
def test_the_log_redactor_masks_every_long_piece_of_an_odd_password(url, pieces):
    redact = Redactor(store_url_secrets(url))
    said = " ".join(f"'{piece}@127.0.0.1'" for piece in pieces if len(piece) >= 4)
    assert not _shows_a_piece(redact(said), tuple(p for p in pieces if len(p) >= 4))


def test_a_bridge_on_sqlite_does_not_load_the_postgresql_driver():
    code = ("import sys, bridge.cli, bridge.commands, bridge.app, bridge.settings\n"
            "from bridge.settings import StoreSettings\n"
            "StoreSettings(url='sqlite:///data/bridge.db')\n"
            "assert 'psycopg' not in sys.modules, 'psycopg was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
