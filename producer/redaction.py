"""One redaction step for everything shown to people or stored where people read it.

Secrets that can leak: a job's token, its pod's Redis password, the RunPod API key, and any
``user:password@`` URL (RunPod echoes the pod's ``REDIS_URL``; a training error may quote a
connection string). Text from producers may also carry NUL (PostgreSQL refuses it in a text
column, for good) and terminal escape sequences (ANSI/OSC: they would act on the operator's
terminal). Every operator-facing output goes through :func:`redact`, then, on a terminal,
:func:`terminal_safe`; every text column through :func:`db_safe`.

Standard library only: every package of the project may import it, and it travels in the pod
script with the rest of ``producer/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

MASK = "***"
MIN_SECRET_CHARS = 4  # a shorter "secret" would blank out ordinary words

# scheme://user:password@ : the password is anything up to the "@" before the host.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^\s/@]+@")
# A URL's ``password=`` query values (``?password=``, ``&sentinel_password=``): redis-py and
# libpq take passwords there too, and a ``redis+sentinel://`` URL names the sentinels' one so.
_QUERY_PASSWORD = re.compile(r"(?i)(?P<head>[?&][A-Za-z0-9_.-]*password=)[^&#\s]+")
# C0 controls but tab and newline, DEL, and C1 controls (ESC starts ANSI/OSC sequences).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_ALL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Return ``text`` with every secret of ``secrets`` and every URL password (``user:password@``
    and ``password=`` query values) replaced.

    Args:
        text: what is about to be shown or stored.
        secrets: literal secrets (token, password, API key); empty and very short values are
            skipped. Each is replaced in plain and in URL-quoted form.

    Returns:
        The text with ``***`` in place of each secret.
    """
    for secret in secrets:
        if not secret or len(secret) < MIN_SECRET_CHARS:
            continue
        for form in {secret, quote(secret, safe="")}:
            text = text.replace(form, MASK)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    return _QUERY_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}", text)


def redact_value(value: object, secrets: Iterable[str | None] = ()) -> object:
    """Apply :func:`redact` to every string inside ``value`` (dicts, lists, tuples)."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v, secrets) for v in value)
    return value


def mask_url(url: str) -> str:
    """Hide a URL's credentials: its whole ``user:password@`` part and ``password=`` values."""
    url = re.sub(r"//[^/@]*@", f"//{MASK}@", url)
    return re.sub(r"(?i)(password=)[^&]*", rf"\1{MASK}", url)


def terminal_safe(text: str, keep_newlines: bool = True) -> str:
    """Return ``text`` with control characters written as escapes (``\\x1b``), inert."""
    pattern = _CONTROL if keep_newlines else _CONTROL_ALL
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def db_safe(text: str) -> str:
    """Return ``text`` without NUL characters, which PostgreSQL refuses in a text column."""
    return text.replace("\x00", "")
