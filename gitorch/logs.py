"""Logging for the daemon: one JSON object per line, or readable text.

``setup_logging("info", "json")`` writes records to stderr as::

    {"ts": "2024-05-01T12:00:00.123Z", "level": "info", "logger": "gitorch.daemon",
     "msg": "revision applied", "service": "web", "revision": "3f2a..."}

(on one line). Fields passed with ``extra={...}`` become top-level keys; an exception
becomes ``"exc"`` (its traceback, in the log only, never in an API response).

The secrets rule: **never log environment values, secret values, or whole specs** (a
spec's ``env`` holds them). Log names, revisions, counts and reasons. As a backstop,
extra fields whose name looks secret (``env``, ``secret``, ``password``, ``token``,
``authorization``, ``api_key``...) are written as ``"[redacted]"`` by both formats.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from gitorch.errors import ConfigError

LogFormat = Literal["text", "json"]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

REDACTED = "[redacted]"

# Field names that must never carry a value to a log line.
_SECRET_NAME = re.compile(
    r"(^env$|environment|secret|passw|token|authorization|cookie|credential|api_?key|private_?key)",
    re.IGNORECASE,
)

# Attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}

# Marks the handler setup_logging installed, so a second call replaces it.
_HANDLER_FLAG = "_gitorch_handler"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields of a record, secret-looking names redacted."""
    fields: dict[str, Any] = {}
    for name, value in vars(record).items():
        if name in _STANDARD or name.startswith("_"):
            continue
        fields[name] = REDACTED if _SECRET_NAME.search(name) else value
    return fields


def _iso(created: float) -> str:
    stamp = datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in extra_fields(record).items():
            entry.setdefault(name, value)  # the four fields above cannot be overridden
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # default=str: an odd extra value (a Path, an enum) must not lose the whole line.
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``2024-05-01T12:00:00.123Z INFO  gitorch.daemon: msg key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{name}={_text_value(value)}" for name, value in extra_fields(record).items()
        )
        line = f"{_iso(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def setup_logging(
    level: str = "info", fmt: LogFormat = "text", *, stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record at ``level`` or above to ``stream`` (stderr) in ``fmt``.

    Idempotent: calling it again replaces the handler it installed before (and leaves
    other handlers, e.g. pytest's, alone). Returns the handler.
    """
    wanted = LEVELS.get(level.lower())
    if wanted is None:
        raise ConfigError(
            f"unknown log level {level!r}", detail=(f"choose one of: {', '.join(LEVELS)}",)
        )
    if fmt not in ("text", "json"):
        raise ConfigError(f"unknown log format {fmt!r}", detail=("choose text or json",))
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    setattr(handler, _HANDLER_FLAG, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_FLAG, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(wanted)
    return handler
