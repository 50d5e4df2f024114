"""A store url's passwords, masked wherever the url or a piece of it may be shown.

The same for every url, trusting no parser: a password may hold an unencoded @ : / # ? & that
a parser cuts it at, and a driver may then quote the piece after the cut.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

MASK = "**********"  # as pydantic prints a SecretStr
# A password parameter's value runs to the next "&name=": the password may hold a bare "&".
SECRET_PARAMETER = re.compile(r"([?&](?:ssl)?password=)(.*?)(?=&[A-Za-z_]+=|$)", re.DOTALL)
# Where a parser may cut a password in pieces; "%" too, for a percent-escape it rejects.
CUTS = re.compile(r"[@:/?#&=%\s]+")
# A piece this long is masked wherever it appears; a shorter one only where it stands alone,
# so that a password piece "db" does not mask every "db" inside a longer word.
WHOLE_PIECE = 4


def masked_store_url(url: str) -> str:
    """The url with every password masked: after the user's ":" up to the last "@", and the
    values of ?password= and ?sslpassword=. The rest is shown as written."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return MASK  # not a url: which part is secret cannot be told
    user_info, at, hosts = rest.rpartition("@")
    if at and ":" in user_info:
        rest = f"{user_info.split(':', 1)[0]}:{MASK}@{hosts}"
    rest = SECRET_PARAMETER.sub(lambda found: found.group(1) + MASK, rest)
    return f"{scheme}://{rest}"


def url_passwords(url: str) -> list[str]:
    """Every password in the url as written, read as masked_store_url reads it."""
    _, separator, rest = url.partition("://")
    user_info, at, _ = rest.rpartition("@")
    found = [user_info.split(":", 1)[1]] if separator and at and ":" in user_info else []
    found += [value.group(2) for value in SECRET_PARAMETER.finditer(url)]
    return [password for password in found if password]


def store_url_secrets(url: str) -> set[str]:
    """Every password of the url as written, decoded and encoded, and each piece of it a
    parser may cut off (those of WHOLE_PIECE characters or more): for masking logs."""
    return {secret for secret in _secret_forms(url) if secret in _wholes(url)
            or len(secret) >= WHOLE_PIECE}


def scrub(text: str, url: str) -> str:
    """`text` (a driver's error) on one line, every password of `url` and piece of one masked."""
    text = " ".join(text.split()).replace(url, masked_store_url(url))
    for whole in sorted(_wholes(url), key=len, reverse=True):
        text = text.replace(whole, MASK)
    for piece in sorted(_secret_forms(url), key=len, reverse=True):
        alone = "" if len(piece) >= WHOLE_PIECE else "(?<![A-Za-z0-9])"
        text = re.sub(f"{alone}{re.escape(piece)}{alone and '(?![A-Za-z0-9])'}", MASK, text)
    return text


def _wholes(url: str) -> set[str]:
    return {form for password in url_passwords(url)
            for form in (password, unquote(password), quote(unquote(password)),
                         quote(unquote(password), safe=""))}


def _secret_forms(url: str) -> set[str]:
    wholes = _wholes(url)
    return wholes | {piece for whole in wholes for piece in CUTS.split(whole) if piece}
