"""Whole turns through the real engine: moderation in -> route -> handler -> moderation out.

A loopback recording proxy sits in front of vLLM and keeps every request body, so the tests
check the prompt vLLM really received. The demo model's words are random, so nothing here
asserts on them; the planted reply is the proxy rewriting the engine's first streamed token.
"""

import json
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot import messages
from bot.config import HandoffSettings, RoutingSettings, TenantsSettings
from bot.knowledge.base import load_documents
from bot.runtime import open_runtime
from bot.turns import Outcome, Turn
from tests.test_dialogue import RecordingSink

pytestmark = pytest.mark.engine
SAMPLE = Path(__file__).parents[2] / "deploy" / "sample-kb"


class RecordingProxy:
    def __init__(self, upstream):
        self.upstream = upstream.removesuffix("/v1")
        self.bodies = []
        self.plant = None  # text that replaces the first streamed token of the next answer

    async def handle(self, request):
        raw = await request.read()
        if raw:
            self.bodies.append((request.path, json.loads(raw)))
        timeout = aiohttp.ClientTimeout(total=None, connect=120, sock_read=120)
        # A JSON answer is one line, which aiohttp reads whole: read_bufsize lets it be up to 2 MiB.
        async with (
            aiohttp.ClientSession(timeout=timeout, read_bufsize=2**20) as http,
            http.request(
                request.method, self.upstream + request.path_qs, data=raw, headers={"content-type": "application/json"}
            ) as response,
        ):
            out = web.StreamResponse(
                status=response.status,
                headers={"content-type": response.headers.get("content-type", "application/json")},
            )
            await out.prepare(request)
            async for raw_line in response.content:
                line = raw_line.decode().rstrip("\r\n")
                if self.plant and line.startswith("data: {") and '"content":"' in line:
                    chunk = json.loads(line[6:])
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        chunk["choices"][0]["delta"]["content"] = self.plant
                        self.plant = None
                        line = "data: " + json.dumps(chunk)
                await out.write((line + "\n").encode())
            await out.write_eof()
            return out

    def prompts(self):
        return [body for path, body in self.bodies if path.endswith("/chat/completions")]


@pytest.fixture
async def proxy(engine):
    recorder = RecordingProxy(engine)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    recorder.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
    try:
        yield recorder
    finally:
        await runner.cleanup()


def turn(text, **fields):
    return Turn(
        platform="test",
        tenant="T1",
        channel=uuid.uuid4().hex[:6],
        user="U1",
        text=text,
        event_id=uuid.uuid4().hex,
        **fields,
    )


async def test_qa_answers_from_the_kb_with_citations_and_refuses_out_of_scope(proxy, make_settings):
    async with open_runtime(make_settings(llm_url=proxy.url)) as rt:
        await rt.kb.ingest("default", load_documents(SAMPLE))
        sink = RecordingSink()
        reply = await rt.manager.handle(turn("How do I reset my password?", command="ask"), sink)
        assert (reply.outcome, reply.intent, reply.route_step) == (Outcome.ANSWERED, "qa", "explicit")
        prompt = proxy.prompts()[-1]["messages"]
        assert prompt[0]["role"] == "system" and "Forgot password" not in prompt[0]["content"]
        assert "Forgot password" in prompt[-1]["content"] and prompt[-1]["content"].endswith(
            "Question: How do I reset my password?"
        )
        assert "Sources:\n[1] Account security and sign-in" in sink.text
        assert "https://help.quillstack.example/security" in sink.text
        ctx = await rt.store.load(reply.key)
        assert ctx.messages[0].content == "How do I reset my password?"  # passages are not saved

        before = len(proxy.prompts())
        sink = RecordingSink()
        reply = await rt.manager.handle(turn("What is the capital of Australia?", command="ask"), sink)
        assert reply.outcome is Outcome.ANSWERED and sink.text == messages.KB_DONT_KNOW
        assert len(proxy.prompts()) == before  # no LLM call


async def test_semantic_routing_sends_a_support_question_to_qa(proxy, make_settings):
    async with open_runtime(make_settings(llm_url=proxy.url)) as rt:
        await rt.kb.ingest("default", load_documents(SAMPLE))
        sink = RecordingSink()
        reply = await rt.manager.handle(turn("how can I export my notes as markdown?"), sink)
        assert (reply.intent, reply.route_step) == ("qa", "semantic")
        assert "Sources:" in sink.text and "notes-and-attachments.md" not in sink.text  # cited by title and link
        assert "https://help.quillstack.example/notes" in sink.text


def qa_and_chat_only(tmp_path: Path) -> TenantsSettings:
    """A tenants file whose only handlers are qa and chat."""
    path = tmp_path / "tenants.toml"
    path.write_text('[default]\nhandlers = ["qa", "chat"]\n')
    return TenantsSettings(_env_file=None, file=path)


async def test_without_a_knowledge_base_a_turn_that_can_only_be_chat_or_qa_is_not_embedded(
    proxy, make_settings, tmp_path
):
    text = "Does the app work offline?"
    settings = make_settings(
        llm_url=proxy.url, tenants=qa_and_chat_only(tmp_path), handoff=HandoffSettings(_env_file=None, on_request=False)
    )
    async with open_runtime(settings) as rt:
        # QA for a tenant with no knowledge base answers as chat: nothing left to decide.
        reply = await rt.manager.handle(turn(text), RecordingSink())
        assert (reply.outcome, reply.intent, reply.route_step) == (Outcome.ANSWERED, "chat", "moot")
        await rt.kb.ingest("default", load_documents(SAMPLE))
        reply = await rt.manager.handle(turn(text), RecordingSink())
        assert (reply.intent, reply.route_step) == ("qa", "semantic")


async def test_a_close_call_between_answers_that_are_the_same_does_not_ask_the_llm(proxy, make_settings, tmp_path):
    # A margin of 1 makes every semantic decision a close call between the top two intents.
    routing = RoutingSettings(_env_file=None, margin=1.0, llm_fallback=True, speculate=False)
    text = "What does error 403 mean when I log in?"  # qa first, translate ("mean") second
    settings = make_settings(llm_url=proxy.url, routing=routing, tenants=qa_and_chat_only(tmp_path))
    async with open_runtime(settings) as rt:

        def choices():
            return [body for body in proxy.prompts() if "structured_outputs" in body]

        # Embedded (a handoff could be asked for), but with no knowledge base and translate
        # not allowed, both qa and translate would be answered as plain chat: no question.
        reply = await rt.manager.handle(turn(text), RecordingSink())
        assert (reply.intent, reply.route_step) == ("qa", "semantic") and choices() == []
        # With one, the two answers differ and the LLM breaks the tie. (The demo model's pick is
        # random: translate, which this tenant does not allow, ends as chat, step `disabled`.)
        await rt.kb.ingest("default", load_documents(SAMPLE))
        reply = await rt.manager.handle(turn(text), RecordingSink())
        assert len(choices()) == 1
        assert (reply.intent, reply.route_step) in {("qa", "llm"), ("chat", "disabled")}


async def test_personal_data_is_redacted_in_the_prompt_and_the_store(proxy, make_settings):
    secrets = ["jane.doe@example.com", "+49 30 1234567", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00"]
    async with open_runtime(make_settings(llm_url=proxy.url)) as rt:
        text = (
            "hi, I'm jane.doe@example.com, phone +49 30 1234567, card 4111 1111 1111 1111, "
            "IBAN DE89 3704 0044 0532 0130 00"
        )
        reply = await rt.manager.handle(turn(text), RecordingSink())
        assert reply.outcome is Outcome.ANSWERED and set(reply.moderation) == {"email", "phone", "card", "iban"}
        sent = json.dumps([body for _, body in proxy.bodies])
        stored = json.dumps([m.content for m in (await rt.store.load(reply.key)).messages])
        for secret in secrets:
            assert secret not in sent and secret not in stored
        for kind in ("email", "phone", "card", "iban"):
            assert f"[{kind} removed]" in stored


async def test_profanity_is_refused_without_an_llm_call(proxy, make_settings):
    async with open_runtime(make_settings(llm_url=proxy.url)) as rt:
        before = len(proxy.bodies)
        sink = RecordingSink()
        reply = await rt.manager.handle(turn("you are a fucking useless bot"), sink)
        assert reply.outcome is Outcome.REJECTED and reply.error == "moderation"
        assert sink.sent == [messages.moderation_refused(("profanity",))]
        assert len(proxy.bodies) == before
        assert (await rt.store.load(reply.key)).messages == ()


async def test_output_moderation_catches_a_planted_reply(proxy, make_settings):
    async with open_runtime(make_settings(llm_url=proxy.url)) as rt:
        proxy.plant = "Call our agent at +44 20 7946 0958 now. "
        sink = RecordingSink()
        reply = await rt.manager.handle(turn("hello there"), sink)
        assert reply.outcome is Outcome.ANSWERED
        assert "7946" not in sink.text and "[phone removed]" in sink.text
        saved = (await rt.store.load(reply.key)).messages[-1]
        assert saved.role == "assistant" and "7946" not in saved.content


async def test_translation_keeps_protected_spans(proxy, make_settings):
    spans = ["<@U123>", "https://status.quillstack.example/incidents/42", ":tada:", "`make deploy`"]
    async with open_runtime(make_settings(llm_url=proxy.url)) as rt:
        sink = RecordingSink()
        text = f"translate to German: {spans[0]} the outage is over, see {spans[1]} {spans[2]} and run {spans[3]}"
        reply = await rt.manager.handle(turn(text), sink)
        assert (reply.intent, reply.route_step) == ("translate", "explicit")
        prompt = proxy.prompts()[-1]["messages"]
        assert "into German" in prompt[0]["content"] and len(prompt) == 2
        for span in spans:
            assert span not in prompt[1]["content"] and span in sink.text
        sink = RecordingSink()
        await rt.manager.handle(
            turn("translate to English: The invoice was sent to your billing address yesterday."), sink
        )
        assert sink.text == messages.already_in("English")
