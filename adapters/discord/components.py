"""The buttons under every final answer: 👍, 👎, "Talk to a person" and "Regenerate".

Each is a discord.py `DynamicItem`: its custom id (`normalize.AnswerPress`) carries all a press
needs, and discord.py rebuilds the item from it when one is pressed, so presses work on any
shard or replica and after a restart, with no view kept in memory. A press is handed to the
press handler (`Presses.on_answer_press`) through the client that received it.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import discord

from adapters.discord.normalize import ANSWER_TEMPLATE, AnswerPress, parse_answer_press
from bot import messages

STYLES = {
    "up": (discord.ButtonStyle.secondary, None, "👍"),
    "down": (discord.ButtonStyle.secondary, None, "👎"),
    "person": (discord.ButtonStyle.primary, messages.PERSON_BUTTON, None),
    "again": (discord.ButtonStyle.secondary, messages.REGENERATE_BUTTON, "🔄"),
}


class PressTaker(Protocol):
    async def on_answer_press(self, interaction: discord.Interaction, press: AnswerPress) -> None: ...


class AnswerButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=ANSWER_TEMPLATE):
    def __init__(self, press: AnswerPress) -> None:
        style, label, emoji = STYLES[press.kind]
        super().__init__(discord.ui.Button(style=style, label=label, emoji=emoji, custom_id=press.custom_id))
        self.press = press

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> AnswerButton:
        press = parse_answer_press(match.group(0))
        assert press is not None  # the template matched
        return cls(press)

    async def callback(self, interaction: discord.Interaction) -> None:
        taker: PressTaker = getattr(interaction.client, "presses")  # noqa: B009  # ParleyClient's, without importing app
        await taker.on_answer_press(interaction, self.press)


def answer_buttons(answer: str, thread: str, asker: str, *, person: bool, regenerate: bool) -> discord.ui.View:
    """The row under an answer. Only a rendering: the view is stopped, so discord.py does not keep
    it; presses come back through `AnswerButton` (registered with the client)."""
    view = discord.ui.View(timeout=None)
    kinds = ["up", "down"] + (["person"] if person else []) + (["again"] if regenerate else [])
    for kind in kinds:
        view.add_item(AnswerButton(AnswerPress(kind, answer, thread, asker)))
    view.stop()
    return view


def is_answer_button(custom_id: str) -> bool:
    return parse_answer_press(custom_id) is not None


def shows_button(message: discord.Message | None, custom_id: str) -> bool:
    """Whether the pressed message still shows the button (a stale client may press one it no longer has)."""
    if message is None:
        return False
    rows = message.components
    return any(getattr(child, "custom_id", None) == custom_id for row in rows for child in getattr(row, "children", ()))
