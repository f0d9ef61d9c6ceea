"""The QA handler's decision: refuse, answer, or ask the LLM whether the passages answer.

The real handler, knowledge base (a real Redis, the sample KB, the real embedder) and
evidence; only the engine is the scripted `FakeLLM`, so its yes/no is chosen by the test."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from bot import messages
from bot.actions.confirm import MemoryConfirmations
from bot.config import KBSettings
from bot.errors import EngineUnavailable
from bot.handlers import Request, Services
from bot.handlers.qa import QAHandler
from bot.knowledge.base import KnowledgeBase, load_documents
from bot.llm.client import CallScope
from bot.routing.router import Route
from bot.store.context import Context
from bot.tenants import DEFAULT_KB, TenantConfig
from bot.turns import Turn
from tests.fakes.actions import deciding
from tests.fakes.llm import URL, FakeLLM

SAMPLE = Path(__file__).parents[2] / "deploy" / "sample-kb"
# Business and plans are in the KB, a trial is not: the words half match, so the evidence is
# below the top of the band, which the tests below open wide (refuse_below 0, check_below 1).
BORDERLINE = "Do you offer a free trial of the Business plan?"
WIDE = {"refuse_below": 0.0, "check_below": 1.0}


@pytest.fixture
def handler(redis, embedder, make_settings):
    async def make(llm: FakeLLM, **kb: object) -> QAHandler:
        settings = make_settings(kb=KBSettings(_env_file=None, **kb))
        knowledge = KnowledgeBase(redis=redis, embedder=embedder, settings=settings.kb, prefix=settings.redis.prefix)
        await knowledge.ingest(DEFAULT_KB, load_documents(SAMPLE))
        # No actions here: an empty catalogue, and write calls kept in memory.
        actions = deciding(llm, settings.actions)
        pending = MemoryConfirmations(ttl=settings.actions.confirm_ttl)
        return QAHandler(Services(settings=settings, llm=llm, kb=knowledge, actions=actions, pending=pending))

    return make


async def ask(handler: QAHandler, text: str, request: Request | None = None) -> str:
    request = request or question(text)
    return "".join([delta async for delta in handler.answer(request)])


def question(text: str) -> Request:
    turn = Turn(platform="test", tenant="T1", channel="C1", user="U1", text=text, event_id=uuid.uuid4().hex)
    return Request(turn, Context(), Route("qa", "explicit", text), TenantConfig(), CallScope(affinity="conv-1"))


async def test_the_llm_saying_no_to_borderline_evidence_gets_i_dont_know_and_no_answer(handler):
    llm = FakeLLM(["An invented answer."], label="no")
    text = await ask(await handler(llm, **WIDE), BORDERLINE)
    assert text == messages.KB_DONT_KNOW
    assert llm.requests == []  # no answer was streamed
    [choice] = llm.choices
    assert choice.labels == ("yes", "no") and choice.affinity == "conv-1"
    assert choice.messages[-1]["content"].count("Question: " + BORDERLINE) == 1
    assert "Business costs $15" in choice.messages[-1]["content"]  # the passages are shown


async def test_the_llm_saying_yes_lets_the_answer_stream_with_its_sources(handler):
    llm = FakeLLM([["Business costs ", "$15."]], label="yes")
    request = question(BORDERLINE)
    text = await ask(await handler(llm, **WIDE), BORDERLINE, request)
    # The sources are data beside the answer, for the sink to show (`bot.reply.cited`).
    assert text == "Business costs $15." and any(s.title.startswith("Plans and pricing") for s in request.sources)
    assert len(llm.choices) == 1 and llm.requests[0].finished


async def test_an_engine_error_on_the_check_answers_as_before(handler, caplog):
    def down(messages: list[dict[str, str]], labels: tuple[str, ...]) -> str:
        raise EngineUnavailable("connection refused", url=URL)

    llm = FakeLLM(["An answer."], label=down)
    with caplog.at_level(logging.WARNING, logger="bot.handlers.qa"):
        text = await ask(await handler(llm, **WIDE), BORDERLINE)
    assert text.startswith("An answer.") and len(llm.requests) == 1
    assert "kb check by LLM failed (EngineUnavailable); answering" in caplog.text


async def test_with_the_check_off_borderline_evidence_is_answered_without_asking(handler):
    llm = FakeLLM(["An answer."], label="no")
    text = await ask(await handler(llm, llm_check=False, **WIDE), BORDERLINE)
    assert text.startswith("An answer.") and llm.choices == []


async def test_clear_cases_make_no_extra_call(handler):
    llm = FakeLLM(["PayPal is not supported."], label="no")
    qa = await handler(llm)  # the default thresholds
    assert (await ask(qa, "Can I pay with PayPal?")).startswith("PayPal is not supported.")
    assert await ask(qa, "How do I bake sourdough bread?") == messages.KB_DONT_KNOW
    assert llm.choices == [] and len(llm.requests) == 1
