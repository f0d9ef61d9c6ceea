"""Questions over the tenant's knowledge base: retrieve, answer from the passages, cite them.

The passages go into the new turn's message, after the stable system prompt and the
history, so vLLM's prefix cache still serves the whole conversation before it; only the
user's own words are saved to the context. Whether the passages answer the question at
all is judged from evidence (`bot/knowledge/evidence.py`): clearly not, and the bot says
it does not know without asking the LLM (which would invent an answer); clearly so, and
it answers; in between, one constrained question to the LLM ("do these passages answer
it? yes/no") decides, since only a reader can tell an answer from a passage on the same
topic. A tenant with no knowledge base at all gets plain chat.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence

from bot import messages
from bot.errors import LLMError
from bot.handlers import Request, Services, register, system_prompt
from bot.handlers.chat import ChatHandler
from bot.knowledge.base import Hit, Index
from bot.llm.client import LLM, CallScope, ChatMessages
from bot.llm.prompts import build_messages
from bot.ops.logs import turn_fields
from bot.reply import Source

log = logging.getLogger(__name__)

INSTRUCTION = (
    "Answer the question below using only these passages from the knowledge base. "
    "If they do not contain the answer, say that you do not know. Refer to passages by number, like [1]."
)


CHECK_PROMPT = (
    "You check a knowledge base's search results. Given passages and a question, say yes if the "
    "passages contain the answer to the question, and no if they do not: passages on the same "
    "topic that leave the question open are a no."
)


def _passages(hits: Sequence[Hit]) -> str:
    return "\n\n".join(f"[{n}] {hit.chunk.citation}\n{hit.chunk.text}" for n, hit in enumerate(hits, 1))


def question_with_passages(question: str, hits: Sequence[Hit]) -> str:
    return f"{INSTRUCTION}\n\n{_passages(hits)}\n\nQuestion: {question}"


def check_messages(question: str, hits: Sequence[Hit]) -> ChatMessages:
    return [
        {"role": "system", "content": CHECK_PROMPT},
        {
            "role": "user",
            "content": f"{_passages(hits)}\n\nQuestion: {question}\n\nDo these passages answer the question?",
        },
    ]


async def passages_answer(llm: LLM, question: str, hits: Sequence[Hit], *, scope: CallScope | None = None) -> bool:
    """The LLM's yes/no (under vLLM's structured-output constraint) on whether `hits` answer
    `question`. An engine error is raised: the caller decides what it means."""
    return await llm.choose(check_messages(question, hits), ["yes", "no"], scope=scope) == "yes"


def sources(hits: Sequence[Hit]) -> list[Source]:
    """The passages as the answer cites them: `[n]` is the n-th."""
    return [Source(hit.chunk.label, hit.chunk.url, hit.chunk.source) for hit in hits]


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
        found = await self._kb.lookup(index, question)
        hits, evidence = found.hits, found.evidence
        log.info(
            "kb %s: %d passages (%s), %s",
            request.tenant.knowledge_base,
            len(hits),
            ", ".join(hit.chunk.source for hit in hits),
            evidence,
            extra=turn_fields(request.turn),
        )
        if not evidence.covered or (evidence.borderline and not await self._confirmed(request, question, hits)):
            yield messages.KB_DONT_KNOW
            return
        prompt = system_prompt(self._settings, request.tenant)
        chat = build_messages(prompt, request.context, question_with_passages(question, hits))
        request.sources.extend(sources(hits))
        async with self._llm.stream(chat, scope=request.scope) as stream:
            async for delta in stream:
                yield delta

    async def _confirmed(self, request: Request, question: str, hits: Sequence[Hit]) -> bool:
        """Borderline evidence: the LLM says whether the passages answer. Without its word
        (the check is off, or the engine failed) the bot answers, as it did before the check:
        the answer prompt itself tells the model to say when the passages do not answer."""
        if not self._settings.kb.llm_check:
            return True
        try:
            answered = await passages_answer(self._llm, question, hits, scope=request.scope)
        except LLMError as exc:
            log.warning("kb check by LLM failed (%s); answering", type(exc).__name__, extra=turn_fields(request.turn))
            return True
        log.info("kb check by LLM: %s", "answered" if answered else "not answered", extra=turn_fields(request.turn))
        return answered
