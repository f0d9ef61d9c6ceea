"""Presses of Parley's buttons on Discord, made turns for the inbox: a write action's Confirm or
Cancel (a `choice` turn), and the buttons under answers (`components`): 👍 / 👎 (a `feedback`
turn, as a reaction makes), "Talk to a person" (the `handoff` turn the web chat's button makes)
and "Regenerate" (the question asked again, by its asker only).

Every press is read from its custom id alone, on any replica and after a restart. Confirm and
Cancel are acknowledged with a deferred update (their buttons stay until the dialogue manager
has decided, then `DiscordSink.settle` replaces them); a vote with an ephemeral thanks at once;
"Talk to a person" and "Regenerate" with a deferred update, their answer following through the
press. Regenerate is a new turn with the same question (kept by `Chains.remember_question`, with
the delivery of the turn that asked it): it names that turn (`Turn.regenerates`), so the dialogue
replaces the earlier exchange in the history while it is still the conversation's last
(`bot.dialogue.regenerate`), and the new answer is shown in the pressed message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

import discord

from adapters.discord.chains import Chains
from adapters.discord.intake import Delivery, note
from adapters.discord.normalize import (
    PRESS_TOKEN,
    PRESSED_MESSAGE,
    AnswerPress,
    answer_press_turn,
    channel_ids,
    choice_turn,
    custom_id_of,
    parse_choice,
    place_of,
    tenant_of,
)
from adapters.discord.scopes import PlaceProfiles
from bot import messages
from bot.config import DiscordSettings
from bot.errors import StoreUnavailable
from bot.ops.logs import turn_fields
from bot.turns import ASK_PERSON, FEEDBACK, VOTES, Turn

log = logging.getLogger(__name__)


class Presses:
    """Button presses as turns. `tracked` marks the event handler running now as on its way to
    the inbox (`Intake.taking_in`), so shutdown waits for presses as for messages."""

    def __init__(
        self,
        *,
        settings: DiscordSettings,
        chains: Chains,
        delivery: Delivery,
        tracked: Callable[[], AbstractContextManager[None]],
        places: PlaceProfiles,
    ) -> None:
        self._settings = settings
        self._places = places  # the profile each place takes its settings from (`Turn.profile`)
        self._chains = chains
        self._delivery = delivery
        self._tracked = tracked

    # -- Confirm / Cancel -------------------------------------------------------------------

    async def on_press(self, interaction: discord.Interaction) -> None:
        """A button pressed on one of Parley's messages: a write action's Confirm or Cancel
        becomes a `choice` turn of the conversation the buttons were offered in."""
        with self._tracked():
            await self._take_press(interaction)

    async def _take_press(self, interaction: discord.Interaction) -> None:
        custom_id = custom_id_of(interaction)
        press = parse_choice(custom_id)
        profile = self._places.key(tenant_of(interaction.guild_id), interaction.channel)
        turn = choice_turn(interaction, press, profile=profile) if press is not None else None
        if turn is None:
            log.warning(
                "a press of a button Parley cannot read (custom id %r, channel %s): told the presser",
                custom_id[:100],
                interaction.channel_id,
            )
            await note(interaction, messages.ACTION_EXPIRED)
            return
        place = place_of(interaction.channel, interaction.guild_id)
        if not place.allowed(
            self._settings, guild_id=interaction.guild_id, channel_ids=channel_ids(interaction.channel)
        ):
            log.info(
                "a %s press where Parley does not answer (allow-lists, DMs): refused",
                turn.text,
                extra=turn_fields(turn),
            )
            await note(interaction, messages.DISCORD_DMS_OFF if place.dm else messages.ACTION_UNAVAILABLE)
            return
        try:
            await interaction.response.defer()  # a deferred update (type 6), within Discord's 3 seconds
        except discord.HTTPException as exc:
            log.warning(
                "could not acknowledge a %s press (%s %s); Discord shows it as failed",
                turn.text,
                exc.status,
                exc.code,
                extra=turn_fields(turn),
            )
            return
        log.info("discord %s pressed on message %s", turn.text, turn.handle[PRESSED_MESSAGE], extra=turn_fields(turn))
        await self._delivery.put(turn)

    # -- the buttons under answers ---------------------------------------------------------

    async def on_answer_press(self, interaction: discord.Interaction, press: AnswerPress) -> None:
        """👍 / 👎 (a `feedback` turn, as a reaction makes), "Talk to a person" (the `handoff`
        turn the web chat's button makes) or "Regenerate" (the question asked again, by its asker
        only) under one of Parley's answers."""
        with self._tracked():
            await self._take_answer_press(interaction, press)

    async def on_stale_press(self, interaction: discord.Interaction) -> None:
        """A press of a button the message no longer shows (a client that had not caught up)."""
        message = interaction.message.id if interaction.message is not None else None
        log.info(
            "a press of a button no longer on message %s (channel %s): told the presser",
            message,
            interaction.channel_id,
        )
        await note(interaction, messages.BUTTON_STALE)

    async def _take_answer_press(self, interaction: discord.Interaction, press: AnswerPress) -> None:
        place = place_of(interaction.channel, interaction.guild_id)
        if not place.allowed(
            self._settings, guild_id=interaction.guild_id, channel_ids=channel_ids(interaction.channel)
        ):
            log.info("a %s press where Parley does not answer (allow-lists, DMs): refused", press.kind)
            await note(interaction, messages.DISCORD_DMS_OFF if place.dm else messages.BUTTON_STALE)
            return
        turn = await self._press_turn(interaction, press)
        if turn is None:
            return
        if turn.command == FEEDBACK:
            await self._delivery.put_vote(turn)
            await note(interaction, messages.VOTE_THANKS)
            return
        try:
            await interaction.response.defer()  # a deferred update (type 6): the answer follows
        except discord.HTTPException as exc:
            log.warning(
                "could not acknowledge a %s press (%s %s); Discord shows it as failed",
                press.kind,
                exc.status,
                exc.code,
                extra=turn_fields(turn),
            )
            return
        log.info("discord %s pressed under answer %s", press.kind, press.answer, extra=turn_fields(turn))
        await self._delivery.put(turn)

    async def _press_turn(self, interaction: discord.Interaction, press: AnswerPress) -> Turn | None:
        """The press's turn, or None when the presser was told why there is none."""
        app = str(interaction.application_id)
        message = str(interaction.message.id) if interaction.message is not None else ""
        profile = self._places.key(tenant_of(interaction.guild_id), interaction.channel)
        if press.kind in VOTES:
            turn = answer_press_turn(
                interaction, press, text=press.kind, command=FEEDBACK, reply_to=press.answer, profile=profile
            )
        elif press.kind == "person":
            handle = {"application_id": app, PRESS_TOKEN: interaction.token, PRESSED_MESSAGE: message}
            text = messages.ASK_FOR_PERSON  # what the customer is shown as saying, as from the web chat
            turn = answer_press_turn(interaction, press, text=text, command=ASK_PERSON, handle=handle, profile=profile)
        elif str(interaction.user.id) != press.asker:
            log.info(
                "Regenerate under answer %s pressed by %s, who did not ask: refused",
                press.answer,
                interaction.user.id,
            )
            await note(interaction, messages.REGENERATE_NOT_YOURS)
            return None
        else:
            try:
                stored = await self._chains.question_of(press.answer)
            except StoreUnavailable as exc:
                log.warning("Regenerate under answer %s: %s; told the presser to retry", press.answer, exc)
                await note(interaction, messages.BUSY)
                return None
            if stored is None:
                log.info("Regenerate under answer %s, whose question has expired: told the presser", press.answer)
                await note(interaction, messages.REGENERATE_EXPIRED)
                return None
            asked = json.loads(stored)
            # The answer is shown again in the pressed message: its first page edits it ("@original").
            handle = {"application_id": app, "interaction_token": interaction.token, "original": "@original"}
            turn = answer_press_turn(
                interaction,
                press,
                text=asked["text"],
                command=asked["command"],
                handle=handle,
                target_language=asked["target_language"],
                profile=profile,
                # The turn that asked (kept since this version): its exchange is the one replaced.
                regenerates=asked.get("uid", ""),
            )
        if turn is None:
            log.info(
                "a %s press under answer %s whose conversation %r is not where it was pressed: refused",
                press.kind,
                press.answer,
                press.thread,
            )
            await note(interaction, messages.BUTTON_STALE)
        return turn
