"""Logging set-up: every line says which conversation and turn it belongs to.

Code logs with `%s` arguments and passes `extra=turn_fields(turn)`; the formatter
adds those fields to the line (plain text) or the object (JSON lines).

The formatters mask what must never reach a log shipper, whatever a `%s` was handed:
platform tokens always, and with `redact_pii` (the default) the personal data that
moderation finds in users' text (e-mail addresses, phone, card and IBAN numbers).
Only the message and the exception are masked; the conversation and event fields are
Parley's own ids and stay readable.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

from bot.config import LogSettings
from bot.moderation.pii import redact_pii
from bot.turns import Turn

FIELDS = ("conversation", "event")

# Token shapes, masked in every line: Slack bot/user/app tokens, Discord bot tokens
# (three base64url parts), and any bearer or bot credential in a header written out.
_TOKEN = re.compile(
    r"\bxox[abeoprs]-[A-Za-z0-9-]{8,}"
    r"|\bxapp-\d-[A-Za-z0-9-]{8,}"
    r"|\b[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,40}\b"
    r"|\b(?:Bearer|bearer|Bot)\s+[A-Za-z0-9._~+/=-]{20,}"
)
# A Discord id (a snowflake: 17 to 20 digits starting with 1) passes the card check one
# time in ten, as does a millisecond timestamp (13 digits starting with 1, the first half of a
# Redis stream entry id); no card network issues numbers like these, so in logs they stay ids.
_SNOWFLAKE = re.compile(r"1\d{12}|1\d{16,19}")


def turn_fields(turn: Turn) -> dict[str, str]:
    return {"conversation": str(turn.key), "event": turn.event_id}


def mask_tokens(text: str) -> str:
    return _TOKEN.sub("[token removed]", text)


def redactor(*, pii: bool) -> Callable[[str], str]:
    """What a log line goes through: tokens masked, and personal data too with `pii`."""
    if not pii:
        return mask_tokens

    def an_id(kind: str, piece: str) -> bool:
        return kind == "card" and _SNOWFLAKE.fullmatch(piece) is not None

    def redact(text: str) -> str:
        return redact_pii(mask_tokens(text), keep=an_id)

    return redact


class _TextFormatter(logging.Formatter):
    def __init__(self, fmt: str, *, redact: Callable[[str], str] = mask_tokens) -> None:
        super().__init__(fmt)
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = self._redact(super().format(record))  # the message and any traceback
        extra = " ".join(f"{f}={getattr(record, f)}" for f in FIELDS if hasattr(record, f))
        return f"{line} [{extra}]" if extra else line


class _JsonFormatter(logging.Formatter):
    def __init__(self, *, redact: Callable[[str], str] = mask_tokens) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": self._redact(record.getMessage()),
        }
        event.update({f: getattr(record, f) for f in FIELDS if hasattr(record, f)})
        if record.exc_info:
            event["exception"] = self._redact(self.formatException(record.exc_info))
        return json.dumps(event, ensure_ascii=False)


def setup_logging(settings: LogSettings, *, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    redact = redactor(pii=settings.redact_pii)
    if settings.json_lines:
        handler.setFormatter(_JsonFormatter(redact=redact))
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", redact=redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
