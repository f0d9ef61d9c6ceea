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

`DiscordSink` adds a write action's Confirm / Cancel buttons (`bot.reply.Choices`): `offer`
posts them where the answer went, under it; a press comes back as a `choice` turn
(`normalize.choice_turn`) whose sink answers through the press's own interaction
(`PressEditor`: follow-ups, and `settle` edits the pressed message). The buttons are
rendered from a stopped `discord.ui.View`, which discord.py does not keep: presses are
understood by their custom id alone (`Presses.on_press`), on any replica, after a restart.

Every answer streamed to its end gets the buttons of `components` under its last page (`attach`):
👍 / 👎, "Talk to a person" where a support desk takes requests, and "Regenerate" under an answer
to a question, whose words (and command) are kept with the chains so it can be asked again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterable, Iterator
from contextlib import contextmanager
from typing import Protocol

import discord

from adapters.discord.chains import Chains
from adapters.discord.components import answer_buttons
from adapters.discord.normalize import PLATFORM, PRESS_TOKEN, PRESSED_MESSAGE, choice_id, thread_name
from bot import messages
from bot.errors import PlatformError, StoreUnavailable
from bot.ops.logs import turn_fields
from bot.ops.stats import AnswerIndex
from bot.reply import NO_JOURNAL, EditingSink, MessageEditor, Offer, ReplyJournal, Settled
from bot.turns import Turn

log = logging.getLogger(__name__)

# Answers are model output: they must never ping @everyone, a role or a user by
# accident. Only the reply itself notifies the person who asked.
ANSWER_MENTIONS = discord.AllowedMentions(everyone=False, users=False, roles=False, replied_user=True)
THREAD_ALREADY_CREATED = 160004  # Discord's code: this message already has a thread
NO_MENTIONS = discord.AllowedMentions.none()
CONTENT_LIMIT = 2000  # Discord's limit on a message's text
ASKED = (None, "ask", "translate")  # the commands of turns that ask a question, which Regenerate asks again


def question_json(turn: Turn) -> str:
    """What Regenerate needs to ask `turn`'s question again (`Chains.remember_question`), and the
    delivery that asked it (`Turn.regenerates`: its exchange in the history is the one replaced)."""
    return json.dumps(
        {"text": turn.text, "command": turn.command, "target_language": turn.target_language, "uid": turn.uid}
    )


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


def offer_text(what: str, limit: int = CONTENT_LIMIT) -> str:
    """The call in words above the buttons: the operator's wording with the model's arguments,
    so untrusted: no markdown of its own, no mention (and sent with none allowed)."""
    text = discord.utils.escape_mentions(discord.utils.escape_markdown(what.strip()))
    limit = min(limit, CONTENT_LIMIT)
    return text if len(text) <= limit else text[: limit - 1].rstrip("\\ ") + "…"


def choice_buttons(call: str, thread: str) -> discord.ui.View:
    """Confirm and Cancel for the call. Only a rendering: the view is stopped, so discord.py
    neither keeps it nor dispatches presses to it (they are read by custom id)."""
    view = discord.ui.View(timeout=None)
    for choice, label, style in (
        ("confirm", messages.CONFIRM_BUTTON, discord.ButtonStyle.success),
        ("cancel", messages.CANCEL_BUTTON, discord.ButtonStyle.danger),
    ):
        view.add_item(discord.ui.Button(style=style, label=label, custom_id=choice_id(choice, call, thread)))
    view.stop()
    return view


class ChoiceEditor(MessageEditor, Protocol):
    async def offer(self, text: str, view: discord.ui.View, *, call: str) -> None:
        """Post the buttons where the answer went."""
        ...

    async def attach(self, view: discord.ui.View) -> bool:
        """Put `view` under the last page posted; False when this editor posted none."""
        ...


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
        self._quoted: int | None = None  # the last page, when the answer quotes the question
        self._last: int | None = None  # the last page posted

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
        self._last = message.id
        if reference is not None or self._quoted is not None:
            self._quoted = message.id
        await self._chains.remember(str(message.id), self._turn.thread)
        if self._answers is not None:
            await self._answers.remember(str(message.id), self._turn)
        return str(message.id)

    async def offer(self, text: str, view: discord.ui.View, *, call: str) -> None:
        """The buttons under the answer: quoting it where the answer quoted the question (in a
        channel's reply chain, so a reply to them continues the conversation too)."""
        reference = None
        if self._quoted is not None:
            reference = discord.MessageReference(
                message_id=self._quoted, channel_id=self._channel_id, fail_if_not_exists=False
            )
        with platform_errors("offering Confirm / Cancel"):
            message = await self._channel().send(
                text,
                view=view,
                reference=reference,  # type: ignore[arg-type]  # discord.py's type leaves out None, its default
                allowed_mentions=NO_MENTIONS,
                nonce=f"offer.{call}",  # at most 25 characters; a retried post comes back as the same message
            )
        await self._chains.remember(str(message.id), self._turn.thread)

    async def edit(self, message_id: str, text: str) -> None:
        with platform_errors("editing an answer"):
            await self._channel().get_partial_message(int(message_id)).edit(content=text)

    async def attach(self, view: discord.ui.View) -> bool:
        if self._last is None:
            return False
        with platform_errors("adding the buttons under an answer"):
            await self._channel().get_partial_message(self._last).edit(view=view, allowed_mentions=NO_MENTIONS)
        return True

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
        self._last: str | None = None  # the last page posted: its id, or "@original"

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
                # A pressed message is the original of its press, not one of the webhook's own:
                # it is edited as "@original", never by its id.
                shown = original if not original.isdigit() else str(message.id)
            else:
                message = await self._webhook().send(text, wait=True, allowed_mentions=discord.AllowedMentions.none())
                shown = str(message.id)
        self._pages += 1
        self._last = shown
        await self._chains.remember(str(message.id), self._turn.thread)
        if self._answers is not None:
            await self._answers.remember(str(message.id), self._turn)
        return shown

    async def edit(self, message_id: str, text: str) -> None:
        with platform_errors("editing a command's answer"):
            await self._webhook().edit_message(_webhook_message_id(message_id), content=text)

    async def attach(self, view: discord.ui.View) -> bool:
        if self._last is None:
            return False
        with platform_errors("adding the buttons under an answer"):
            await self._webhook().edit_message(_webhook_message_id(self._last), view=view, allowed_mentions=NO_MENTIONS)
        return True

    async def offer(self, text: str, view: discord.ui.View, *, call: str) -> None:
        """The buttons as a follow-up of the command's answer."""
        with platform_errors("offering Confirm / Cancel"):
            message = await self._webhook().send(text, view=view, wait=True, allowed_mentions=NO_MENTIONS)
        await self._chains.remember(str(message.id), self._turn.thread)


def _webhook_message_id(message_id: str) -> int:
    # "@original" is the API's name for an interaction's first response; discord.py types the id as int.
    return int(message_id) if message_id.isdigit() else message_id  # type: ignore[return-value]


class PressEditor(InteractionEditor):
    """Answers a press of Confirm or Cancel (a `choice` turn) through the press's own interaction:
    the answer as follow-ups, and `settle` edits the pressed message, which the deferred update
    made the interaction's original (or tells a stranger, alone, that it is not theirs)."""

    def __init__(
        self, client: discord.Client | None, turn: Turn, chains: Chains, *, answers: AnswerIndex | None = None
    ) -> None:
        super().__init__(client, turn, chains, answers=answers)
        self._pages = 1  # the original is the pressed message: every page of the answer is a follow-up

    def _webhook(self) -> discord.Webhook:
        client = live(self._client, "answering a button")
        # An application webhook (type 3), as discord.py's `Interaction.followup` makes it: only
        # such a webhook may send ephemeral messages.
        return discord.Webhook.from_state(
            data={"id": self._turn.handle["application_id"], "type": 3, "token": self._turn.handle[PRESS_TOKEN]},
            state=client._connection,
        )

    async def settle(self, outcome: Settled) -> None:
        """The pressed message's buttons give way to who decided what; a stranger's press is
        answered with an ephemeral follow-up, which only they see."""
        if outcome == "refused":
            with platform_errors("answering a stranger's press"):
                await self._webhook().send(messages.ACTION_NOT_YOURS, ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        text = messages.action_settled(outcome, f"<@{self._turn.user}>")
        with platform_errors("settling Confirm / Cancel"):
            await self._webhook().edit_message(  # type: ignore[call-overload]  # discord.py types the id as int
                "@original",  # the API's name for the message whose button was pressed
                content=text,
                view=None,
                allowed_mentions=NO_MENTIONS,
            )
        log.info(
            "discord buttons on message %s settled: %s",
            self._turn.handle.get(PRESSED_MESSAGE),
            outcome,
            extra=turn_fields(self._turn),
        )


class DiscordSink:
    """`EditingSink` through one of the editors above, with Confirm / Cancel buttons
    (`bot.reply.Choices`). One instance per answer."""

    def __init__(
        self,
        editor: ChoiceEditor,
        turn: Turn,
        *,
        limit: int,
        interval: float,
        journal: ReplyJournal = NO_JOURNAL,
        chains: Chains | None = None,
        person: bool = False,
    ) -> None:
        self._editor = editor
        self._turn = turn
        self._limit = limit
        self._chains = chains  # keeps the question for Regenerate; None: no buttons under answers
        self._person = person  # a support desk takes requests: offer "Talk to a person"
        self._editing = EditingSink(editor, limit=limit, interval=interval, journal=journal)

    async def send(self, text: str) -> None:
        await self._editing.send(text)

    async def stream(self, chunks: AsyncIterable[str]) -> str:
        text = await self._editing.stream(chunks)
        if text.strip() and self._chains is not None:
            await self._add_buttons(self._chains)
        return text

    async def _add_buttons(self, chains: Chains) -> None:
        """The buttons under the answer's last page. The answer itself is shown already: a failure
        here is logged, and the answer stands without them."""
        turn = self._turn
        if not turn.event_id.isdigit():
            return
        again = turn.command in ASKED and bool(turn.text.strip())
        view = answer_buttons(turn.event_id, turn.thread, turn.user, person=self._person, regenerate=again)
        try:
            if again:
                await chains.remember_question(turn.event_id, question_json(turn))
            if not await self._editor.attach(view):
                log.info("no page of this answer was posted here: no buttons under it", extra=turn_fields(turn))
        except (PlatformError, StoreUnavailable) as exc:
            log.warning("the answer stands without its buttons: %s", exc, extra=turn_fields(turn))

    async def offer(self, offer: Offer) -> None:
        buttons = choice_buttons(offer.call, self._turn.thread)
        await self._editor.offer(offer_text(offer.what, self._limit), buttons, call=offer.call)

    async def settle(self, outcome: Settled) -> None:
        if isinstance(self._editor, PressEditor):
            await self._editor.settle(outcome)
        else:  # not a press: no buttons of its own to settle
            log.warning("settle(%s) for a turn that pressed no button: ignored", outcome, extra=turn_fields(self._turn))
