"""Masking secrets in text shown to people: error messages, dry runs, status output.

What can leak on the RunPod path: the RunPod API key (the request's ``Authorization``), the
pod's Redis password (inside ``REDIS_URL``, which RunPod echoes back in every pod it returns)
and any other ``user:password@`` URL. Everything printed goes through :func:`mask`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

MASK = "***"

# scheme://user:password@ : the password is anything up to the last "@" before the host.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^\s/@]+@")


def mask(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Return ``text`` with every secret of ``secrets`` and every URL password replaced.

    Args:
        text: what is about to be shown.
        secrets: literal secrets (API key, password); empty and very short values are skipped
            so a one-letter "secret" cannot blank out the message.

    Returns:
        The text with ``***`` in place of each secret, in plain and URL-quoted form.
    """
    for secret in secrets:
        if not secret or len(secret) < 4:
            continue
        for form in {secret, quote(secret, safe="")}:
            text = text.replace(form, MASK)
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)
