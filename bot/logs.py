"""Logging set-up: every line says which conversation and turn it belongs to.

Code logs with `%s` arguments and passes `extra=turn_fields(turn)`; the formatter
adds those fields to the line (plain text) or the object (JSON lines).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from bot.config import LogSettings
from bot.turns import Turn

FIELDS = ("conversation", "event")


def turn_fields(turn: Turn) -> dict[str, str]:
    return {"conversation": str(turn.key), "event": turn.event_id}


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{f}={getattr(record, f)}" for f in FIELDS if hasattr(record, f))
        return f"{line} [{extra}]" if extra else line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        event.update({f: getattr(record, f) for f in FIELDS if hasattr(record, f)})
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


def setup_logging(settings: LogSettings, *, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if settings.json_lines:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    # Client libraries log request URLs at INFO; keep them out of ours.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
