"""Plain chat: the default handler, answering with the conversation's history."""

from __future__ import annotations

from collections.abc import AsyncIterator

from bot.config import Settings
from bot.context import Context
from bot.handlers import register
from bot.llm import LLMClient
from bot.prompts import build_messages
from bot.turns import Turn


@register("chat")
class ChatHandler:
    def __init__(self, settings: Settings, llm: LLMClient) -> None:
        self._system_prompt = settings.context.system_prompt
        self._llm = llm

    async def answer(self, turn: Turn, context: Context) -> AsyncIterator[str]:
        messages = build_messages(self._system_prompt, context, turn.text)
        async with self._llm.stream(messages) as stream:
            async for delta in stream:
                yield delta
