"""The way back to Discord: `MessageEditor`s that `bot.reply.EditingSink` streams through.

`ChannelEditor` answers a message: the first page replies to it (or, for a new
conversation with `open_threads`, opens a thread from it and answers there),
further pages follow. `InteractionEditor` answers a slash command: the first page
fills the deferred response, further pages are follow-up messages, all edited
through the interaction's webhook (its token is valid for 15 minutes).

Rate limits stay discord.py's job: each call goes through its per-route buckets,
which wait out a 429 and retry, and pause every request during a global 429.
A message is created with a nonce that Discord enforces, so a retried post
returns the message already made instead of posting it twice. Every page posted
is remembered with its conversation, so a reply to any of them continues it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import discord

from adapters.discord.chains import Chains
from adapters.discord.normalize import PLATFORM, thread_name
from bot.errors import PlatformError
from bot.ops.logs import turn_fields
from bot.ops.stats import AnswerIndex
from bot.turns import Turn

log = logging.getLogger(__name__)

# Answers are model output: they must never ping @everyone, a role or a user by
# accident. Only the reply itself notifies the person who asked.
ANSWER_MENTIONS = discord.AllowedMentions(everyone=False, users=False, roles=False, replied_user=True)
THREAD_ALREADY_CREATED = 160004  # Discord's code: this message already has a thread


@contextmanager
def platform_errors(action: str) -> Iterator[None]:
    """discord.py's errors as Parley's `PlatformError` (no token is ever in them)."""
    try:
        yield
    except discord.RateLimited as exc:
        raise PlatformError(
            f"{action}: rate limited", platform=PLATFORM, status=429, retry_after=exc.retry_after
        ) from exc
    except discord.HTTPException as exc:
        raise PlatformError(
            f"{action}: {exc.status} {exc.text[:200]}",
            platform=PLATFORM,
            status=exc.status,
            code=str(exc.code),
            permanent=isinstance(exc, (discord.Forbidden, discord.NotFound)),
        ) from exc


def live(client: discord.Client | None, action: str) -> discord.Client:
    """The client, if it can still make requests (it is gone only after a shutdown's drain timeout)."""
    if client is None or client.is_closed():
        raise PlatformError(f"{action}: the Discord client is closed", platform=PLATFORM, permanent=True)
    return client


class ChannelEditor:
    """Posts and edits an answer in a channel, thread or DM."""

    def __init__(
        self,
        client: discord.Client | None,
        turn: Turn,
        chains: Chains,
        *,
        archive_minutes: int,
        answers: AnswerIndex | None = None,
    ) -> None:
        self._client = client
        self._answers = answers  # told each message posted, so a 👍/👎 on it finds the answer
        self._turn = turn
        self._chains = chains
        self._archive_minutes = archive_minutes
        self._channel_id = int(turn.address["post_channel"])
        self._guild_id = int(turn.tenant) if turn.tenant.isdigit() else None
        self._pages = 0

    def _channel(self) -> discord.PartialMessageable:
        return live(self._client, "answering").get_partial_messageable(self._channel_id, guild_id=self._guild_id)

    async def post(self, text: str) -> str:
        reference = None
        if self._pages == 0 and self._turn.reply_to is not None:
            # In a thread opened from the question, the question is right above: no need to quote it.
            in_new_thread = bool(self._turn.handle.get("open_thread")) and await self._open_thread()
            if not in_new_thread:
                reference = discord.MessageReference(
                    message_id=int(self._turn.reply_to), channel_id=self._channel_id, fail_if_not_exists=False
                )
        with platform_errors("posting an answer"):
            message = await self._channel().send(
                text,
                reference=reference,  # type: ignore[arg-type]  # discord.py's type leaves out None, its default
                allowed_mentions=ANSWER_MENTIONS,
                # Unique per page of this turn's answer: a retried post comes back as the same message.
                nonce=f"{self._turn.event_id}.{self._pages}",
            )
        self._pages += 1
        await self._chains.remember(str(message.id), self._turn.thread)
        if self._answers is not None:
            await self._answers.remember(str(message.id), self._turn)
        return str(message.id)

    async def edit(self, message_id: str, text: str) -> None:
        with platform_errors("editing an answer"):
            await self._channel().get_partial_message(int(message_id)).edit(content=text)

    async def _open_thread(self) -> bool:
        """Open a thread from the question and answer there; False (reply in the channel)
        when Parley may not create threads in this channel."""
        assert self._turn.reply_to is not None
        question = self._channel().get_partial_message(int(self._turn.reply_to))
        try:
            thread = await question.create_thread(
                name=thread_name(self._turn.text),
                auto_archive_duration=self._archive_minutes,  # type: ignore[arg-type]  # a Literal of the allowed minutes; the setting is checked against them
            )
            thread_id = thread.id
        except discord.HTTPException as exc:
            if exc.code != THREAD_ALREADY_CREATED:
                log.warning(
                    "cannot open a thread (%s %s); answering in the channel",
                    exc.status,
                    exc.code,
                    extra=turn_fields(self._turn),
                )
                return False
            thread_id = question.id  # opened by an earlier attempt at this turn: a thread has its message's id
        self._channel_id = thread_id
        await self._chains.remember(str(thread_id), self._turn.thread)
        return True


class InteractionEditor:
    """Fills a deferred slash-command response, then adds follow-ups, through the interaction webhook."""

    def __init__(
        self, client: discord.Client | None, turn: Turn, chains: Chains, *, answers: AnswerIndex | None = None
    ) -> None:
        self._client = client
        self._answers = answers
        self._turn = turn
        self._chains = chains
        self._pages = 0

    def _webhook(self) -> discord.Webhook:
        client = live(self._client, "answering a command")
        return discord.Webhook.partial(
            int(self._turn.handle["application_id"]), self._turn.handle["interaction_token"], client=client
        )

    async def post(self, text: str) -> str:
        with platform_errors("answering a command"):
            if self._pages == 0:
                original = self._turn.handle.get("original", "@original")
                message = await self._webhook().edit_message(
                    int(original) if original.isdigit() else original,  # type: ignore[arg-type]  # "@original" is the API's name for the first response
                    content=text,
                    allowed_mentions=discord.AllowedMentions.none(),
                )
            else:
                message = await self._webhook().send(text, wait=True, allowed_mentions=discord.AllowedMentions.none())
        self._pages += 1
        await self._chains.remember(str(message.id), self._turn.thread)
        if self._answers is not None:
            await self._answers.remember(str(message.id), self._turn)
        return str(message.id)

    async def edit(self, message_id: str, text: str) -> None:
        with platform_errors("editing a command's answer"):
            await self._webhook().edit_message(int(message_id), content=text)
