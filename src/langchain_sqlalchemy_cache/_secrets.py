"""Keeping passwords out of everything the cache shows: reprs, exceptions, log lines.

A password can reach the cache in the URL's user info, as a query option
(``?password=``), or in an engine's ``connect_args``. URLs are shown with both URL
forms masked; messages that embed text the cache does not control (driver errors,
which may echo a DSN) go through a ``Redactor`` that knows the secrets it was given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from sqlalchemy import URL

MASK = "***"
# Query options that hold secrets: password, passwd, sslpassword, pwd, *secret*, *token*.
_SECRET_OPTION = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
# In free text: "scheme://user:SECRET@" (no spaces) and "password=SECRET" up to "&".
_TEXT_SECRETS = (
    (re.compile(r"(\w[\w+.-]*://[^:/@\s]*:)[^@\s]*@"), rf"\1{MASK}@"),
    (
        re.compile(r"((?:pass\w*|pwd|\w*secret\w*|\w*token\w*)=)[^&\s'\"]*", re.IGNORECASE),
        rf"\1{MASK}",
    ),
)


def safe_url(url: URL) -> str:
    """``url`` as it may be shown: every password-like part replaced by ``***``."""
    hidden = {name: MASK for name in url.query if _SECRET_OPTION.search(name)}
    if hidden:
        url = url.update_query_dict(hidden)
    return url.render_as_string(hide_password=True)


def url_secrets(url: URL) -> list[str]:
    """The secret values ``url`` carries: its password and password-like options."""
    found = [] if url.password is None else [str(url.password)]
    for name, value in url.query.items():
        if _SECRET_OPTION.search(name):
            found.extend([value] if isinstance(value, str) else value)
    return found


def raw_url_secrets(text: str) -> list[str]:
    """What may be a password in a URL string that SQLAlchemy could not parse.

    The user info runs to the last ``@`` (a password may hold ``/``, spaces or ``@``);
    its password is whatever follows the first ``:``.
    """
    found: list[str] = []
    slashes = text.find("//")  # "scheme://", or a mistyped "scheme//"
    userinfo, at, _ = text[slashes + 2 if slashes >= 0 else 0 :].rpartition("@")
    if at and ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    found.extend(
        match.group(1)
        for match in re.finditer(r"(?:pass\w*|pwd|secret\w*|token\w*)=([^&]*)", text, re.I)
    )
    return [secret for secret in found if secret]


def mask_url(text: str) -> str:
    """``text`` with whatever looks like a password in a URL replaced by ``***``."""
    for pattern, replacement in _TEXT_SECRETS:
        text = pattern.sub(replacement, text)
    return text


class Redactor:
    """Replaces known secrets (and URL-looking passwords) in text by ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        given = {secret for secret in secrets if secret.strip()}
        # A URL whose password holds "@" parses to a prefix of it: mask the whole one
        # only, or every "p" of a text would go for a password "p@ss".
        whole = {s for s in given if not any(s != other and s in other for other in given)}
        variants = {form for secret in whole for form in _forms(secret)}
        # Longest first: the quoted form of a secret before the secret itself.
        self._secrets = sorted(variants, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """``text`` without any known secret."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return mask_url(text)


def _forms(secret: str) -> set[str]:
    # As given, and as a rendered URL or a quoted DSN would spell it.
    return {secret, quote(secret, safe=""), quote_plus(secret), repr(secret)[1:-1]}
