"""Questions over the tenant's knowledge base: retrieve, answer from the passages, cite them.

The passages go into the new turn's message, after the stable system prompt and the
history, so vLLM's prefix cache still serves the whole conversation before it; only the
user's own words are saved to the context. When no passage is relevant enough the bot
says it does not know, without asking the LLM (which would invent an answer). A tenant
with no knowledge base at all gets plain chat.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence

from bot import messages
from bot.handlers import Request, Services, register, system_prompt
from bot.handlers.chat import ChatHandler
from bot.knowledge.base import Hit, Index
from bot.llm.prompts import build_messages
from bot.ops.logs import turn_fields

log = logging.getLogger(__name__)

INSTRUCTION = (
    "Answer the question below using only these passages from the knowledge base. "
    "If they do not contain the answer, say that you do not know. Refer to passages by number, like [1]."
)


def question_with_passages(question: str, hits: Sequence[Hit]) -> str:
    passages = "\n\n".join(f"[{n}] {hit.chunk.citation}\n{hit.chunk.text}" for n, hit in enumerate(hits, 1))
    return f"{INSTRUCTION}\n\n{passages}\n\nQuestion: {question}"


def sources(hits: Sequence[Hit]) -> str:
    lines = [f"[{n}] {hit.chunk.citation}" for n, hit in enumerate(hits, 1)]
    return messages.sources(lines)


@register("qa")
class QAHandler:
    def __init__(self, services: Services) -> None:
        self._settings = services.settings
        self._llm = services.llm
        self._kb = services.kb
        self._chat = ChatHandler(services)

    async def _index(self, request: Request) -> Index | None:
        """The tenant's knowledge base, or None when nothing was ingested for it."""
        index = await self._kb.index(request.tenant.knowledge_base)
        return index if index is not None and index.chunks else None

    async def answers_as_chat(self, request: Request) -> bool:
        return await self._index(request) is None

    async def answer(self, request: Request) -> AsyncGenerator[str, None]:
        index = await self._index(request)
        if index is None:
            # No knowledge base was ingested for this tenant: "I don't know" to every
            # question would make the bot useless, so it answers as plain chat.
            async for delta in self._chat.answer(request):
                yield delta
            return
        question = request.route.text or request.turn.text
        hits = await self._kb.search(index, question)
        log.info(
            "kb %s: %d passages (best %.2f)",
            request.tenant.knowledge_base,
            len(hits),
            hits[0].score if hits else 0.0,
            extra=turn_fields(request.turn),
        )
        if not hits:
            yield messages.KB_DONT_KNOW
            return
        prompt = system_prompt(self._settings, request.tenant)
        chat = build_messages(prompt, request.context, question_with_passages(question, hits))
        async with self._llm.stream(chat, scope=request.scope) as stream:
            async for delta in stream:
                yield delta
        yield sources(hits)
