"""Structured logs: one JSON object per line, each line of a request carrying its id."""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fanout.core.identity import CURRENT_CALLER

#: The id of the request being served, for every log line it causes (set by
#: request_ids; tasks started during the request inherit it, jobs included).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fanout.request_id", default=None
)

#: Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, pid, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line."""
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            # Which process wrote it: the supervisor, or which of its workers.
            "pid": record.process,
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        caller = CURRENT_CALLER.get()
        if caller is not None:
            # A name, never a credential: the key's configured name or the token's sub.
            entry["caller"] = caller.label
        if record.name == "hypercorn.access" and isinstance(record.args, Mapping):
            entry.update(_access_fields(record.args))
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry.setdefault(key, value)  # never over the core fields
        if record.exc_info:
            # Tracebacks go to the log (never to a client).
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _access_fields(atoms: Mapping[str, Any]) -> dict[str, Any]:
    # Hypercorn passes its access-log atoms as the record's args.
    return {
        "method": atoms.get("m"),
        "path": atoms.get("U"),
        "query": atoms.get("q") or None,
        "status": _status(atoms.get("s")),
        "duration_ms": round(int(atoms.get("D", 0)) / 1000, 3),
        "client": atoms.get("h"),
    }


def _status(atom: Any) -> int | None:
    # Hypercorn writes the status as text ("-" when there was no response);
    # upstream call lines carry it as a number, and so does this.
    text = str(atom)
    return int(text) if text.isdigit() else None


#: The top-level packages and modules whose loggers LOG_LEVEL sets.
APP_LOGGERS = ("app", "clients", "fanout", "handlers")


def set_level(level: str) -> None:
    """Set the level of the app's own loggers (LOG_LEVEL).

    On the app's loggers, not the root: Hypercorn applies its
    ``logconfig_dict`` lazily, on its first log line, and that resets the
    root level (leaving other existing loggers alone).
    """
    for name in APP_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())
