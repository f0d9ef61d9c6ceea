"""Answers back into Slack: post then edit, or Slack's native streaming where offered.

`SlackEditor` is the `MessageEditor` under `bot.reply.EditingSink` (chat.postMessage,
then chat.update at most once per `edit_interval`, a new message in the same thread
past `message_limit`). `SlackSink` first tries chat.startStream/appendStream/stopStream,
which show the answer growing without edits; a workspace or channel that does not
offer them (unknown_method, not_allowed, ...) gets the edits instead, with nothing
posted twice. Rate limits are the Web API client's job: it is built with a 429
retry handler that waits out Retry-After, so no call here retries by itself.

Every text leaves through `mrkdwn.safe` (posts, edits, continuations, `markdown_text`,
slash-command answers): escaped, with only the mentions the user's own message made put
back, so neither a user nor the model can make Parley ping a channel or hide a link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.slack import normalize
from adapters.slack.mrkdwn import decode_ids, escape, link, safe
from adapters.slack.normalize import MENTIONS
from bot import messages
from bot.errors import PlatformError
from bot.reply import (
    CLOSE_RESERVE,
    FENCE,
    NO_JOURNAL,
    EditingSink,
    Offer,
    ReplyJournal,
    Settled,
    Source,
    open_fence,
)
from bot.turns import Turn

log = logging.getLogger(__name__)

PLATFORM = "slack"
# Errors that no retry or other message can fix: the channel or the access is gone.
PERMANENT = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_auth",
        "account_inactive",
        "token_revoked",
        "missing_scope",
        "no_permission",
        "restricted_action",
        "cant_update_message",
        "message_not_found",
        "msg_too_long",
        "team_access_not_granted",
        "ekm_access_denied",
    }
)
# chat.startStream refusals that mean "use edits instead". The first group is about the
# workspace or token (remembered for every later answer), the rest about this one place.
STREAMING_ABSENT = frozenset(
    {
        "unknown_method",
        "not_allowed_token_type",
        "missing_scope",
        "feature_not_enabled",
        "method_deprecated",
        "not_implemented",
    }
)
STREAMING_REFUSED = STREAMING_ABSENT | {
    "not_allowed",
    "method_not_supported_for_channel_type",
    "restricted_action",
    "invalid_arguments",
    "team_not_allowed",
    "user_not_found",
}


def platform_error(exc: SlackApiError, method: str) -> PlatformError:
    response = exc.response
    code = str(response.get("error", "") or "")
    retry_after = response.headers.get("Retry-After") or response.headers.get("retry-after")
    return PlatformError(
        f"{method} failed: {code or response.status_code}",
        platform=PLATFORM,
        status=response.status_code,
        code=code,
        retry_after=float(retry_after) if retry_after else None,
        permanent=code in PERMANENT,
    )


async def call(method: str, request: Awaitable[AsyncSlackResponse]) -> AsyncSlackResponse:
    """One Web API call with Slack's failures turned into `PlatformError` (never carrying the token)."""
    try:
        return await request
    except SlackApiError as exc:
        raise platform_error(exc, method) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PlatformError(f"{method} failed: {type(exc).__name__}", platform=PLATFORM) from exc


SECTION_CHARS = 600  # of the call in words: even escaped whole (x5) it fits a section block's 3000
SECTION_LIMIT = 3000  # characters of a section block's text
MAX_BLOCKS = 50  # blocks in one message

Block = dict[str, Any]


def feedback_block() -> Block:
    """Slack's native 👍/👎 under an answer. A press comes back as a `block_actions` payload whose
    value is the vote (`normalize.feedback_of`), traced to the answer by the message it is on."""

    def button(vote: str, emoji: str, label: str) -> Block:
        return {"text": {"type": "plain_text", "text": emoji}, "accessibility_label": label, "value": vote}

    return {
        "type": "context_actions",
        "elements": [
            {
                "type": "feedback_buttons",
                "action_id": normalize.FEEDBACK_ACTION,
                "positive_button": button("up", "👍", messages.FEEDBACK_UP_LABEL),
                "negative_button": button("down", "👎", messages.FEEDBACK_DOWN_LABEL),
            }
        ],
    }


def person_block(thread: str) -> Block:
    """The button "Talk to a person" under an answer, where a support desk takes requests: a press
    is the `handoff` turn of the answer's conversation (`normalize.person_of`), whoever presses it."""
    button = {
        "type": "button",
        "action_id": normalize.PERSON_ACTION,
        "text": {"type": "plain_text", "text": messages.PERSON_BUTTON},
        "value": thread,  # the conversation's thread: a DM's answer may sit at the top level
    }
    return {"type": "actions", "block_id": normalize.PERSON_BLOCK, "elements": [button]}


SOURCE_CHARS = 150  # of a source's title or path in the context block
LINK_CHARS = 1000  # a longer link is named, not linked


def sources_block(sources: Sequence[Source]) -> Block:
    """A knowledge-base answer's sources as a context block: `[n]` and the title, linked to the
    document where it has a web link, else followed by the path it was ingested from."""
    text = f"*{messages.SOURCES_TITLE}*"
    for n, source in enumerate(sources, 1):
        label = escape(f"[{n}] {source.title[:SOURCE_CHARS]}")
        if source.url.startswith(("https://", "http://")) and len(source.url) <= LINK_CHARS:
            line = link(source.url, label)
        else:
            line = f"{label} ({escape((source.url or source.origin)[:SOURCE_CHARS])})"
        if len(text) + 1 + len(line) > SECTION_LIMIT:
            break
        text += "\n" + line
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def sections(text: str) -> list[Block]:
    """Already escaped `text` as mrkdwn section blocks of at most `SECTION_LIMIT` characters,
    cut as native streaming cuts pages (at a line break, a code block closed and reopened)."""
    blocks: list[Block] = []
    while text:
        head, text = _cut(text, SECTION_LIMIT - CLOSE_RESERVE) if len(text) > SECTION_LIMIT else (text, "")
        fence = open_fence(head)
        if fence is not None and text:
            head, text = head.rstrip("\n") + "\n" + FENCE, fence + "\n" + text
        if head.strip():
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": head}})
    return blocks


# Told the ts of each message an answer posts, so that a reaction on it can be traced back
# to the answer (`bot.ops.stats.AnswerIndex`).
OnPost = Callable[[str], Awaitable[None]]


class SlackEditor:
    """`MessageEditor` over chat.postMessage and chat.update, in one channel (and thread).
    `allowed`: the mention ids the text may make live (see `mrkdwn.safe`)."""

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        channel: str,
        thread_ts: str,
        on_post: OnPost | None = None,
        allowed: frozenset[str] = frozenset(),
    ) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts or None  # None: top level (a DM that is not threaded)
        self._on_post = on_post
        self._allowed = allowed
        # What each message of the answer shows (escaped), in page order: the last one gets the
        # feedback buttons once the answer is complete (`add_blocks`).
        self._shown: dict[str, str] = {}

    async def post(self, text: str) -> str:
        text = safe(text, self._allowed)
        response = await call(
            "chat.postMessage",
            self._client.chat_postMessage(channel=self._channel, thread_ts=self._thread_ts, text=text),
        )
        ts = str(response["ts"])
        self._shown[ts] = text
        if self._on_post is not None:
            await self._on_post(ts)
        return ts

    async def edit(self, message_id: str, text: str) -> None:
        text = safe(text, self._allowed)
        await call("chat.update", self._client.chat_update(channel=self._channel, ts=message_id, text=text))
        self._shown[message_id] = text

    async def add_blocks(self, extra: list[Block]) -> bool:
        """Put `extra` under the answer's last message; False when they do not fit. A message with
        blocks shows its blocks, not its text (which stays, for notifications), so the text goes in
        as sections above them. One more edit per answer, after the last: `EditingSink` knows no
        blocks."""
        if not self._shown:
            return True
        ts, text = next(reversed(self._shown.items()))
        blocks = [*sections(text), *extra]
        if len(blocks) > MAX_BLOCKS:
            log.info("answer message %s too long for blocks: nothing under it", ts)
            return False
        await call("chat.update", self._client.chat_update(channel=self._channel, ts=ts, text=text, blocks=blocks))
        return True


class StreamingSupport:
    """Whether this workspace offers native streaming; learnt from the first refusal, shared
    by every answer of one adapter."""

    def __init__(self, enabled: bool) -> None:
        self.available = enabled


class _Refused(Exception):
    """chat.startStream was refused before anything was shown: answer with edits instead."""


class NativeStream:
    """One answer through chat.startStream/appendStream/stopStream, in pages of `limit`.

    Appended text cannot be taken back, so pages are cut as the text arrives: a page
    is closed when the next piece would overflow it, at a line break (or a space) in
    that piece, closing and reopening a code block that spans the cut. Pieces are escaped
    first, so a page's length is what Slack receives.
    """

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        channel: str,
        thread_ts: str,
        user: str,
        team: str,
        limit: int,
        on_post: OnPost | None = None,
        allowed: frozenset[str] = frozenset(),
        journal: ReplyJournal = NO_JOURNAL,
    ) -> None:
        self._client = client
        self._journal = journal
        self._on_post = on_post
        self._channel = channel
        self._thread_ts = thread_ts
        self._user = user
        self._team = team
        self._limit = limit
        self._allowed = allowed
        self._ts: str | None = None  # the message streaming now
        self._page = ""
        self.started = False

    async def write(self, piece: str) -> None:
        piece = safe(piece, self._allowed)
        while piece:
            room = self._limit - CLOSE_RESERVE - len(self._page)
            if len(piece) <= room:
                await self._append(piece)
                return
            head, piece = _cut(piece, room)
            fence = open_fence(self._page + head)
            if fence is not None:
                head, piece = head.rstrip("\n") + "\n" + FENCE, fence + "\n" + piece
            if head.strip():
                await self._append(head)
            await self.stop()

    async def stop(self, blocks: list[Block] | None = None) -> bool:
        """End the message streaming now; `blocks` (sources, buttons) go under its text. False
        when Slack refused them (the message is stopped without them)."""
        if self._ts is None:
            return not blocks
        ts, self._ts, self._page = self._ts, None, ""
        if blocks:
            try:
                await call("chat.stopStream", self._client.chat_stopStream(channel=self._channel, ts=ts, blocks=blocks))
                return True
            except PlatformError as exc:
                # The answer is whole already: it must not stay "streaming" for want of buttons.
                log.warning("chat.stopStream refused the answer's blocks (%s); stopped without them", exc.code)
        await call("chat.stopStream", self._client.chat_stopStream(channel=self._channel, ts=ts))
        return not blocks

    async def _append(self, text: str) -> None:
        if self._ts is None:
            try:
                response = await call(
                    "chat.startStream",
                    self._client.chat_startStream(
                        channel=self._channel,
                        thread_ts=self._thread_ts,
                        markdown_text=text,
                        recipient_user_id=self._user or None,
                        recipient_team_id=self._team or None,
                    ),
                )
            except PlatformError as exc:
                if not self.started and (exc.code in STREAMING_REFUSED or exc.status == 404):
                    raise _Refused(exc.code) from exc
                raise
            self._ts = str(response["ts"])
            self.started = True
            if self._on_post is not None:
                await self._on_post(self._ts)
            await self._journal.record([*self._journal.ids, self._ts])
        else:
            await call(
                "chat.appendStream",
                self._client.chat_appendStream(channel=self._channel, ts=self._ts, markdown_text=text),
            )
        self._page += text


def _cut(piece: str, room: int) -> tuple[str, str]:
    """Split `piece` so the head fits in `room`: at the last line break, else the last space
    (either only if it keeps a third of the room), else exactly at `room`."""
    if room <= 0:
        return "", piece
    window = piece[:room]
    for sep in ("\n", " "):
        pos = window.rfind(sep)
        if pos >= room // 3 and pos > 0:
            return piece[:pos], piece[pos:].lstrip("\n") if sep == "\n" else piece[pos + 1 :]
    # A hard cut: not inside an escape (`&amp;`, `&lt;`, `&gt;`), which would show as debris.
    amp = piece.rfind("&", max(0, room - 4), room)
    if amp > 0 and ";" not in piece[amp:room]:
        room = amp
    return piece[:room], piece[room:]


class SlackSink:
    """`ReplySink` for one answer in one Slack conversation."""

    def __init__(
        self,
        client: AsyncWebClient,
        turn: Turn,
        *,
        limit: int,
        interval: float,
        streaming: StreamingSupport,
        on_post: OnPost | None = None,
        journal: ReplyJournal = NO_JOURNAL,
        feedback: bool = False,
        person: bool = False,
    ) -> None:
        self._client = client
        self._turn = turn
        self._on_post = on_post
        self._limit = limit
        self._interval = interval
        self._streaming = streaming
        self._allowed = decode_ids(turn.handle.get(MENTIONS))
        self._editor = SlackEditor(
            client, channel=turn.channel, thread_ts=turn.thread, on_post=on_post, allowed=self._allowed
        )
        self._editing = EditingSink(self._editor, limit=limit, interval=interval, journal=journal)
        self._journal = journal
        # What goes under a complete answer: its sources (`cite`), "Talk to a person" where a desk
        # takes requests, and 👍/👎 (only where a press can be traced back to the answer).
        self._closing: list[Block] = [person_block(turn.thread)] if person else []
        self._closing += [feedback_block()] if feedback else []
        self._sources: Sequence[Source] = ()

    async def cite(self, sources: Sequence[Source]) -> None:
        self._sources = sources
        self._closing.insert(0, sources_block(sources))

    async def send(self, text: str) -> None:
        await self._editing.send(text)

    async def offer(self, offer: Offer) -> None:
        """Confirm / Cancel buttons under the question, in the answer's thread. (Slack shows every
        button to everyone in the channel; the dialogue manager lets only the asker decide.)"""
        value = normalize.choice_value(offer.call, self._turn.thread)
        buttons = [
            {
                "type": "button",
                "action_id": action_id,
                "text": {"type": "plain_text", "text": label},
                "value": value,
                "style": style,
            }
            for action_id, label, style in (
                ("parley_confirm", messages.CONFIRM_BUTTON, "primary"),
                ("parley_cancel", messages.CANCEL_BUTTON, "danger"),
            )
        ]
        what = safe(offer.what[:SECTION_CHARS])
        await call(
            "chat.postMessage",
            self._client.chat_postMessage(
                channel=self._turn.channel,
                thread_ts=self._turn.thread or None,
                text=what,  # the notification's and screen readers' text
                blocks=[
                    {"type": "section", "text": {"type": "mrkdwn", "text": what}},
                    {"type": "actions", "block_id": normalize.CHOICE_BLOCK, "elements": buttons},
                ],
            ),
        )

    async def settle(self, outcome: Settled) -> None:
        """The pressed message's buttons give way to who decided what; a stranger's press is
        answered with a message only they see."""
        if outcome == "refused":
            await call(
                "chat.postEphemeral",
                self._client.chat_postEphemeral(
                    channel=self._turn.channel,
                    user=self._turn.user,
                    thread_ts=self._turn.thread or None,
                    text=safe(messages.ACTION_NOT_YOURS),
                ),
            )
            return
        ts = self._turn.handle.get(normalize.OFFER_TS)
        if not ts:
            return
        text = safe(messages.action_settled(outcome, f"<@{self._turn.user}>"), {self._turn.user})
        await call(
            "chat.update",
            self._client.chat_update(
                channel=self._turn.channel,
                ts=ts,
                text=text,
                blocks=[{"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}],
            ),
        )

    async def stream(self, chunks: AsyncIterable[str]) -> str:
        if self._turn.handle.get(normalize.PANE) and self._turn.thread:
            chunks = self._in_pane(chunks)
        # Native streaming always answers in a thread; a DM's top level gets edits, and so does an
        # answer taken over from a stopped worker (it edits the message that worker had posted).
        if not (self._streaming.available and self._turn.thread) or self._editing.resuming:
            return await self._edited(chunks)
        turn = self._turn
        native = NativeStream(
            self._client,
            channel=turn.channel,
            thread_ts=turn.thread,
            user=turn.user,
            team=turn.address.get("user_team", turn.tenant),
            limit=self._limit,
            on_post=self._on_post,
            allowed=self._allowed,
            journal=self._journal,
        )
        source = aiter(chunks)
        try:
            return await self._stream_native(native, source)
        except _Refused as exc:
            code, text = exc.args
            if code in STREAMING_ABSENT:
                self._streaming.available = False
            log.info("native streaming refused (%s); answering with edits", code)
            return await self._edited(_resume(text, source))

    async def _in_pane(self, chunks: AsyncIterable[str]) -> AsyncIterator[str]:
        """An assistant-pane question: the thread's title (its first question) and a status are
        set beside the engine's first token (never in its way), the status cleared once the
        answer starts."""
        opening: asyncio.Task[None] | None = asyncio.create_task(self._open_pane())
        try:
            async for chunk in chunks:
                if opening is not None and chunk.strip():
                    await opening
                    opening = None
                    await self._pane_call("assistant.threads.setStatus", status="")
                yield chunk
        finally:
            if opening is not None:
                opening.cancel()
                await asyncio.gather(opening, return_exceptions=True)

    async def _open_pane(self) -> None:
        if title := self._turn.handle.get(normalize.TITLE):
            await self._pane_call("assistant.threads.setTitle", title=title)
        await self._pane_call(
            "assistant.threads.setStatus",
            status=messages.ASSISTANT_STATUS,
            loading_messages=list(messages.ASSISTANT_LOADING),
        )

    async def _pane_call(self, method: str, **args: Any) -> None:
        """One call about the pane thread; a refusal costs the title or status, not the answer."""
        turn = self._turn
        try:
            await call(
                method,
                self._client.api_call(method, json={"channel_id": turn.channel, "thread_ts": turn.thread, **args}),
            )
        except PlatformError as exc:
            log.warning(
                "%s refused in assistant thread %s:%s (%s): answering without it",
                method,
                turn.channel,
                turn.thread,
                exc.code,
            )

    async def _edited(self, chunks: AsyncIterable[str]) -> str:
        text = await self._editing.stream(chunks)
        if self._closing:
            try:
                if await self._editor.add_blocks(self._closing):
                    return text
            except PlatformError as exc:
                # The answer is shown whole already; only what goes under it is missing.
                log.warning("could not add the sources and buttons under an answer: %s", exc)
            await self._cite_as_text()
        return text

    async def _cite_as_text(self) -> None:
        """The sources the blocks under the answer would have shown, as a message after it: an
        answer is not left without them because Slack refused a block."""
        if self._sources:
            lines = [f"[{n}] {source.text}" for n, source in enumerate(self._sources, 1)]
            await self._editor.post(messages.sources(lines).strip())

    async def _stream_native(self, native: NativeStream, source: AsyncIterator[str]) -> str:
        """Read the engine's stream and append what arrived at most once per interval (a
        flusher beside the reader, as in `EditingSink`, so a slow call never stalls reading)."""
        text = ""
        sent = 0
        dirty = asyncio.Event()
        done = False

        async def flush() -> None:
            nonlocal sent
            while True:
                await dirty.wait()
                dirty.clear()
                started = time.monotonic()
                # A mention still arriving (`<@U1` without its `>`) waits for the next append,
                # so that it is escaped, or put back, whole.
                upto = len(text) if done else _settled(text, sent)
                if upto > sent:
                    await native.write(text[sent:upto])
                    sent = upto
                if done and not dirty.is_set():
                    if not await native.stop(self._closing):
                        await self._cite_as_text()
                    return
                await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))

        flusher = asyncio.create_task(flush())
        try:
            async for chunk in source:
                text += chunk
                if text.strip():
                    dirty.set()
                if flusher.done():
                    break
            else:
                done = True
                dirty.set()
            await flusher
        except _Refused as exc:
            raise _Refused(exc.args[0], text) from exc
        finally:
            if not flusher.done():
                flusher.cancel()
                await asyncio.gather(flusher, return_exceptions=True)
            if native.started:
                # An answer cut short (an error, a shutdown) must not stay "streaming" forever.
                with contextlib.suppress(PlatformError):
                    await native.stop()
        return text


def _settled(text: str, start: int) -> int:
    """Where the text after `start` can be appended now: before a `<` whose `>` has not arrived
    yet, when that is short enough to still become a mention."""
    opening = text.rfind("<", max(start, len(text) - 64))
    return opening if opening != -1 and ">" not in text[opening:] else len(text)


async def _resume(head: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    """What was read before native streaming was refused, then the rest of the engine's stream."""
    if head:
        yield head
    async for chunk in rest:
        yield chunk


class ResponseUrlSink:
    """`ReplySink` for a slash command: one ephemeral answer through its `response_url`."""

    def __init__(self, response_url: str) -> None:
        self._url = response_url

    async def send(self, text: str) -> None:
        try:
            response = await AsyncWebhookClient(self._url).send(text=safe(text), response_type="ephemeral")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PlatformError(f"response_url failed: {type(exc).__name__}", platform=PLATFORM) from exc
        if response.status_code != 200:
            raise PlatformError(
                f"response_url failed: {response.status_code}", platform=PLATFORM, status=response.status_code
            )

    async def stream(self, chunks: AsyncIterable[str]) -> str:
        text = "".join([chunk async for chunk in chunks])
        if text.strip():
            await self.send(text)
        return text
