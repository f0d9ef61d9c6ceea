"""Summaries of what people wrote in Slack: a thread (the "Summarise this thread" message
shortcut, `shortcuts`) or the channel a person is looking at beside the assistant pane
(`summarise` typed in a pane thread, or the pane's suggested prompt "Summarise this channel").

Both read with one Web API call a page, following Slack's cursor (`read_pages`): a thread with
`conversations.replies` (oldest first), a channel with `conversations.history` (newest first,
only its last `HISTORY_HOURS` hours, and only what people wrote: other bots, Parley itself, joins
and edits are left out). Both are bounded the same way, to `MAX_MESSAGES` messages and the newest
`MAX_CHARS` characters of their lines, and become one chat turn asking for a summary of those
lines, delimited as data (`summary_request`), which the dialogue answers like any other: in the
thread, or in the pane's thread.

The channel comes from Slack's own pane events (`threads.ThreadMemory.open_pane`), so it is one
the person has open. What cannot be done is told in words, never a crash: no channel in view, a
channel Parley is not in (`not_in_channel`, `channel_not_found`), Slack's rate limit once the Web
API client's own retries are spent (when to try again, from its Retry-After), nothing written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from adapters.slack.normalize import USER_SUBTYPES, clean_text
from adapters.slack.sink import call
from bot import messages
from bot.errors import InboxFull, InboxUnavailable, ParleyError, PlatformError
from bot.ops.logs import turn_fields
from bot.reply import ReplySink
from bot.store.dedupe import Deduper
from bot.store.inbox import Inbox
from bot.turns import Turn

log = logging.getLogger(__name__)

# How much is read and sent. 200 messages is two pages of `PAGE` (two tier-3 calls, well inside
# Slack's ~50 a minute); 6000 characters of lines leave room for the request's own words under
# the dialogue's default input limit (PARLEY_DIALOGUE_MAX_INPUT_CHARS, 8000), which refuses longer
# turns: a longer read keeps its newest lines and says the older ones were left out.
MAX_MESSAGES = 200
PAGE = 100
# And at most this many calls, whatever a page holds: an app distributed outside the Slack
# Marketplace gets 15 messages a page and one call a minute of these two methods (since 2025).
MAX_PAGES = 2
MAX_CHARS = 6000
HISTORY_HOURS = 24  # of a channel: "what happened here lately", and fewer pages to read
NOT_A_MEMBER = frozenset({"not_in_channel", "channel_not_found"})

Page = Callable[[str | None], Awaitable[AsyncSlackResponse]]  # one page, from Slack's cursor (None: the first)


async def read_pages(method: str, page: Page) -> tuple[list[dict[str, Any]], bool]:
    """Up to `MAX_MESSAGES` messages in at most `MAX_PAGES` calls, in the order Slack pages them,
    and whether more were left unread. Raises `PlatformError` (`ratelimited` once the client's
    retries are spent) when not even the first page could be read; a later page refused for the
    rate limit leaves what was read, to be summarised."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        try:
            response = await call(method, page(cursor))
        except PlatformError as exc:
            if not found or not rate_limited(exc):
                raise
            log.info("slack: %s rate limited after %s messages; those are summarised", method, len(found))
            return found, True
        found.extend(m for m in response.get("messages") or [] if isinstance(m, dict))
        cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
        if not response.get("has_more") or cursor is None:
            return found[:MAX_MESSAGES], len(found) > MAX_MESSAGES
        if len(found) >= MAX_MESSAGES:
            break
    return found[:MAX_MESSAGES], True


def thread_lines(found: list[dict[str, Any]], me: str) -> list[str]:
    """Messages as "name/id: text" lines, in their order, each on one line (so a message cannot
    pass itself off as another's); messages without text are left out."""
    lines = []
    for m in found:
        text = " ".join(clean_text(m.get("text") or "", me).split())
        if not text:
            continue
        who = m.get("user") or (m.get("bot_profile") or {}).get("name") or m.get("username") or m.get("bot_id") or "?"
        lines.append(f"{who}: {text}")
    return lines


def people_only(found: list[dict[str, Any]], me: str) -> list[dict[str, Any]]:
    """A channel's messages that people wrote: other bots', Parley's own, joins, edits and the
    other event-like subtypes left out (the `normalize` rule for what is a person writing)."""
    return [
        m
        for m in found
        if m.get("subtype") in USER_SUBTYPES
        and not (m.get("bot_id") or m.get("bot_profile"))
        and m.get("user") not in (None, "", me)
    ]


def newest(lines: list[str], limit: int) -> tuple[list[str], int]:
    """The newest of `lines` that fit in `limit` characters, and how many older ones did not."""
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        size += len(line) + 1
        if size > limit:
            break
        kept.append(line)
    return kept[::-1], len(lines) - len(kept)


def summary_request(found: list[dict[str, Any]], me: str, ask: Callable[[list[str], int], str]) -> str | None:
    """The text of the turn asking for a summary of `found` (oldest first), its newest lines
    within `MAX_CHARS`; None when none of them has text."""
    lines, left_out = newest(thread_lines(found, me), MAX_CHARS)
    if not lines:
        return None
    if left_out:
        log.info("slack: summarising the newest %s lines (%s older left out)", len(lines), left_out)
    return ask(lines, left_out)


def rate_limited(exc: PlatformError) -> bool:
    return exc.code == "ratelimited" or exc.status == 429


def refusal(exc: PlatformError, otherwise: str) -> str:
    """What the person is told when Slack refused a read: when to try again if it was Slack's
    rate limit, else `otherwise`."""
    return messages.summary_rate_limited(exc.retry_after) if rate_limited(exc) else otherwise


class ChannelSummary:
    """The pane's `summarise`, for one run of the adapter: the channel in view is read and a
    summary of it asked for in the pane's thread."""

    def __init__(
        self,
        *,
        inbox: Inbox,
        deduper: Deduper,
        client_for: Callable[[str], AsyncWebClient],
        sink_for: Callable[[Turn], ReplySink],
    ) -> None:
        self._inbox = inbox
        self._deduper = deduper
        self._client_for = client_for
        self._sink_for = sink_for  # the pane's thread: where what cannot be done is told

    async def summarise(self, turn: Turn, viewing: str, me: str) -> None:
        """`turn` is the person's command in the pane's thread, `viewing` the channel beside it
        ("" when none is known), `me` Parley's user there. Run by a task of the adapter's
        `notices`, which a failure must not end: every error is logged or told here."""
        try:
            # Slack redelivers an event it saw no ack of in time: the channel is read once.
            if not await self._deduper.claim(replace(turn, event_id=f"summary:{turn.event_id}")):
                return
            if (told := await self._ask(turn, viewing, me)) is not None:
                await self._sink_for(turn).send(told)
        except ParleyError as exc:
            log.warning("slack: a channel summary was dropped: %r", exc, extra=turn_fields(turn))

    async def _ask(self, turn: Turn, viewing: str, me: str) -> str | None:
        """None once the request is in the inbox, else what to tell the person."""
        if not viewing:
            log.info(
                "slack: summarise in a pane thread with no channel in view: told the user", extra=turn_fields(turn)
            )
            return messages.SUMMARY_NO_CHANNEL
        client = self._client_for(turn.tenant)
        oldest = f"{time.time() - HISTORY_HOURS * 3600:.6f}"
        try:
            found, more = await read_pages(
                "conversations.history",
                lambda cursor: client.conversations_history(channel=viewing, oldest=oldest, limit=PAGE, cursor=cursor),
            )
        except PlatformError as exc:
            log.warning("slack: could not read channel %s to summarise: %r", viewing, exc, extra=turn_fields(turn))
            return refusal(
                exc,
                messages.SUMMARY_NOT_IN_CHANNEL if exc.code in NOT_A_MEMBER else messages.SUMMARY_CHANNEL_UNREADABLE,
            )
        if more:
            log.info(
                "slack: channel %s has more than %s recent messages; the older are not read", viewing, MAX_MESSAGES
            )
        # Slack pages a channel newest first: the lines go oldest first, as in a thread.
        text = summary_request(
            people_only(found[::-1], me), me, partial(messages.summarise_channel, hours=HISTORY_HOURS)
        )
        if text is None:
            log.info("slack: channel %s has nothing to summarise: told the user", viewing, extra=turn_fields(turn))
            return messages.summary_nothing_recent(HISTORY_HOURS)
        try:
            await self._inbox.put(replace(turn, text=text))
        except (InboxFull, InboxUnavailable) as exc:
            log.warning("inbox %r; a channel summary was refused", exc, extra=turn_fields(turn))
            return messages.BUSY
        log.info("slack: summary of channel %s asked for", viewing, extra=turn_fields(turn))
        return None
