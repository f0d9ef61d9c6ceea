"""Plain chat: the default handler, answering with the conversation's history and the
tenant's system prompt."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from bot.handlers import Request, Services, register, system_prompt
from bot.llm.prompts import build_messages


@register("chat")
class ChatHandler:
    def __init__(self, services: Services) -> None:
        self._settings = services.settings
        self._llm = services.llm

    async def answer(self, request: Request) -> AsyncGenerator[str, None]:
        prompt = system_prompt(self._settings, request.tenant)
        messages = build_messages(prompt, request.context, request.turn.text)
        async with self._llm.stream(messages, scope=request.scope) as stream:
            async for delta in stream:
                yield delta
