"""Log lines as a log shipper receives them: one JSON object per line, personal data and tokens masked."""

import io
import json
import logging

import pytest

from bot.config import LogSettings
from bot.ops.logs import setup_logging, turn_fields
from bot.turns import Turn

TURN = Turn(
    platform="discord",
    tenant="1234567890123456789",
    channel="1111111111111111111",
    user="U1",
    text="hi",
    event_id="1300000000000000007",
    thread="1300000000000000007",
)


@pytest.fixture
def logged():
    """`setup_logging` into a buffer; the root logger is given back to pytest afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()

    def setup(**settings: object) -> io.StringIO:
        setup_logging(LogSettings(_env_file=None, **settings), stream=stream)
        return stream

    yield setup
    root.handlers[:], level = saved
    root.setLevel(level)


def test_json_lines_mask_personal_data_and_keep_the_turn_fields(logged):
    stream = logged(json_lines=True)
    log = logging.getLogger("parley.test")
    log.warning("user wrote: %s", "mail jane.doe@example.com or call +44 20 7946 0958", extra=turn_fields(TURN))
    try:
        raise ValueError("card 4111 1111 1111 1111 rejected")
    except ValueError:
        log.exception("failed for %s", "bob@example.org", extra=turn_fields(TURN))
    log.info("plain line, multi\nline message")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, "one JSON object per line, even for a traceback or a newline"
    first, second, third = map(json.loads, lines)
    assert first["message"] == "user wrote: mail [email removed] or call [phone removed]"
    assert first["conversation"] == str(TURN.key) and first["event"] == TURN.event_id
    assert first["level"] == "WARNING" and first["logger"] == "parley.test"
    assert second["message"] == "failed for [email removed]"
    assert "ValueError: card [card removed] rejected" in second["exception"]
    assert "conversation" not in third and third["message"] == "plain line, multi\nline message"
    text = stream.getvalue()
    for secret in ("jane.doe", "7946", "4111", "bob@"):
        assert secret not in text


def test_text_lines_mask_too_but_discord_ids_stay_readable(logged):
    stream = logged()
    snowflake = "1234567890123456785"  # passes the Luhn check, as one Discord id in ten does
    logging.getLogger("parley.test").warning("guild %s: %s", snowflake, "call 020 7946 0958", extra=turn_fields(TURN))
    line = stream.getvalue()
    assert f"guild {snowflake}: call [phone removed]" in line
    assert line.rstrip().endswith(f"[conversation={TURN.key} event={TURN.event_id}]")


def test_redaction_can_be_turned_off_but_tokens_never_appear(logged):
    stream = logged(json_lines=True, redact_pii=False)
    slack = "xoxb-1111-2222-secret-bot-token"
    discord_token = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB"
    logging.getLogger("parley.test").error("oops: %s %s mail a@example.com", slack, discord_token)
    (event,) = map(json.loads, stream.getvalue().splitlines())
    assert event["message"] == "oops: [token removed] [token removed] mail a@example.com"
