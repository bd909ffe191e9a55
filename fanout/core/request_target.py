"""Checking a path and query a client asks the gateway to call on an upstream (pure)."""

from __future__ import annotations

import re
from urllib.parse import unquote

#: Longer request targets are refused: 8 KiB is the request line most servers accept.
MAX_TARGET_LENGTH = 8192

# RFC 3986 origin-form: pchar (unreserved, pct-encoded, sub-delims, ":" and "@")
# and "/" in the path; the query adds "?". Nothing else goes on a request line
# as is: spaces, controls, "#", "\" and non-ASCII would be sent raw.
_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")
_QUERY = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
# Some servers take "\" for "/" once decoded, so dot segments are looked for across both.
_SEGMENT_SEPARATORS = re.compile(r"[/\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_origin_form(target: str) -> None:
    """Raise ValueError (saying why) unless ``target`` is a plain origin-form path and query.

    It must start with one "/", hold only characters RFC 3986 allows there
    (anything else percent-encoded, "%" only as "%XX"), be at most
    MAX_TARGET_LENGTH characters, and its path, once percent-decoded, must
    hold no "." or ".." segment (split at "/" and "\\") and no control
    character: so an upstream that decodes before resolving cannot be led
    out of the base path either.
    """
    if len(target) > MAX_TARGET_LENGTH:
        raise ValueError(f"is {len(target)} characters long; at most {MAX_TARGET_LENGTH}")
    if not target.startswith("/") or target.startswith("//"):
        raise ValueError('must start with a single "/"')
    path, _, query = target.partition("?")
    if not _PATH.fullmatch(path) or not _QUERY.fullmatch(query):
        raise ValueError(
            "may hold only the characters RFC 3986 allows in a path and query "
            "(percent-encode the rest: spaces, controls, #, \\ and non-ASCII)"
        )
    decoded = unquote(path)
    if any(segment in (".", "..") for segment in _SEGMENT_SEPARATORS.split(decoded)):
        raise ValueError("may not hold . or .. segments (also percent-encoded)")
    if _CONTROL.search(decoded):
        raise ValueError("may not hold control characters in its path (also percent-encoded)")
