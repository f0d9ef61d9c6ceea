"""The web chat's transport without the model: files, origins, tokens, frames, limits, shutdown.

Parley's real serving path (`run_adapters`, the dialogue manager, real Redis) runs behind
the adapter; the LLM URL points nowhere, so a turn that reaches the dialogue manager is
answered with its "model unavailable" sentence, which these tests use as proof that the
turn went in and was answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest

import adapters.web
from adapters.web.pages import CHOICE_TEXT, CONFIG_SLOT
from adapters.web.tokens import TokenSigner, new_visitor
from bot import messages
from bot.errors import EngineUnavailable, InputRejected
from bot.runtime import open_runtime
from bot.store.context import Context, Message
from bot.store.inbox import MemoryInbox
from tests.web.conftest import SECRET, SITE, Tab, web_settings

UNAVAILABLE = messages.for_user(EngineUnavailable("down"))


async def seed(stack, visitor: str, *pairs: tuple[str, str]) -> None:
    """A conversation as the dialogue manager would have saved it."""
    new = [Message(role, text, 3) for role, text in pairs]
    await stack.runtime.store.save(stack.key(visitor), Context(), new)


async def dedupe_claimed(stack, event_id: str) -> bool:
    prefix = stack.runtime.settings.redis.prefix
    return bool(await stack.runtime.redis.exists(f"{prefix}:seen:web:{SITE}:{event_id}"))


async def taken_and_failed(tab: Tab, id: str) -> dict:
    """Wait for the ack of message `id` and for the answer the dead engine leads to."""
    ack = await tab.next("ack")
    assert ack["id"] == id
    _, done = await tab.answer(ack["answer"])
    assert done["text"] == UNAVAILABLE
    return ack


async def test_serves_the_demo_page_the_widget_with_its_settings_and_health(stack_for):
    async with stack_for(title="Acme help", colour="#0b7285", greeting="Hello from Acme!") as stack:
        async with stack.session.get(stack.base + "/") as page:
            body = await page.text()
            assert page.status == 200 and page.content_type == "text/html"
            assert '<script src="/widget.js" async></script>' in body and "<title>Acme help</title>" in body
            assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        async with stack.session.get(stack.base + "/widget.js") as js:
            source = await js.text()
            assert js.status == 200 and js.content_type == "application/javascript"
            assert CONFIG_SLOT not in source
            config = json.loads(source[source.rindex("})(") + 3 : source.rindex(");")])
            assert (config["title"], config["colour"], config["greeting"], config["site"]) == (
                "Acme help",
                "#0b7285",
                "Hello from Acme!",
                SITE,
            )
            assert config["text"] == {**messages.WEB_WIDGET_TEXT, **CHOICE_TEXT} and config["maxChars"] == 4000
            assert (config["text"]["confirm"], config["text"]["cancel"], config["text"]["confirmed"]) == (
                messages.CONFIRM_BUTTON,
                messages.CANCEL_BUTTON,
                messages.action_settled("confirmed", "you"),
            )
        async with stack.session.get(stack.base + "/widget.css") as css:
            assert css.status == 200 and css.content_type == "text/css" and ".launcher" in await css.text()
        async with stack.session.get(stack.base + "/healthz") as health:
            assert health.status == 200
        async with stack.session.get(stack.base + "/ws") as plain:
            assert plain.status == 400  # not a WebSocket upgrade


async def test_new_visitor_then_reload_with_the_token_shows_the_history(stack_for):
    async with stack_for() as stack:
        first = await stack.connect()
        assert first.welcome["resumed"] is False and first.history == []
        await seed(stack, first.visitor, ("user", "where is my parcel?"), ("assistant", "On its way."))
        again = await stack.connect(first.token)
        assert again.welcome["resumed"] is True and again.visitor == first.visitor
        assert again.history == [
            {"role": "user", "text": "where is my parcel?"},
            {"role": "assistant", "text": "On its way."},
        ]
        assert again.token != first.token or again.token.split(".")[2] >= first.token.split(".")[2]  # re-issued


@pytest.mark.parametrize("kind", ["forged", "expired", "other-site", "malformed"])
async def test_a_bad_token_starts_a_new_conversation_and_reveals_nothing(stack_for, kind, caplog):
    caplog.set_level(logging.INFO, logger="adapters.web")
    async with stack_for() as stack:
        victim = await stack.connect()
        await seed(stack, victim.visitor, ("user", "my address is secret"), ("assistant", "Noted."))
        version, visitor, expires, mac = victim.token.split(".")
        token = {
            "forged": f"{version}.{visitor}.{int(expires) + 1}.{mac}",
            "expired": TokenSigner(SECRET.encode(), site=SITE, ttl=60, clock=lambda: time.time() - 120).issue(visitor),
            "other-site": TokenSigner(SECRET.encode(), site="another-site", ttl=60).issue(visitor),
            "malformed": "v1." + visitor,
        }[kind]
        intruder = await stack.connect(token)
        assert intruder.welcome["resumed"] is False and intruder.history == []
        assert intruder.visitor != visitor
        reason = {"forged": "forged", "expired": "expired", "other-site": "forged", "malformed": "malformed"}[kind]
        assert any(f"{reason} visitor token; starting a new conversation" in r.getMessage() for r in caplog.records)
        assert all(token not in r.getMessage() for r in caplog.records)
        # The victim's own token still works.
        assert (await stack.connect(victim.token)).history[0]["text"] == "my address is secret"


async def test_foreign_origin_is_refused_with_403_and_a_log_line(stack_for, caplog):
    caplog.set_level(logging.WARNING, logger="adapters.web")
    async with stack_for(allowed_origins=["https://shop.example"]) as stack:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await stack.open(origin="https://evil.example")
        assert refused.value.status == 403
        async with stack.session.get(stack.base + "/widget.js", headers={"Origin": "https://evil.example"}) as http:
            assert http.status == 403 and await http.text() == messages.WEB_ORIGIN_REFUSED
        assert sum("refused origin https://evil.example" in r.getMessage() for r in caplog.records) == 2
        # The listed origin and the chat's own origin are welcome.
        tab = await stack.connect(origin="https://shop.example")
        assert tab.welcome["type"] == "welcome"
        assert (await stack.connect(origin=stack.base)).welcome["type"] == "welcome"
        async with stack.session.get(stack.base + "/widget.js", headers={"Origin": "https://shop.example"}) as http:
            assert http.status == 200 and http.headers["Access-Control-Allow-Origin"] == "https://shop.example"
            assert "Origin" in http.headers["Vary"]
        preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "GET"}
        async with stack.session.options(stack.base + "/widget.js", headers=preflight) as options:
            assert options.status == 204 and options.headers["Access-Control-Allow-Origin"] == "https://shop.example"


async def test_malformed_frames_get_error_frames_and_the_socket_stays_open(stack_for, caplog):
    caplog.set_level(logging.INFO, logger="adapters.web")
    async with stack_for() as stack:
        ws = await stack.open()
        tab = Tab(ws, {})
        await tab.send({"type": "message", "id": "abcdefgh", "text": "before hello"})
        assert (await tab.next("error"))["code"] == "hello_first"
        await tab.send({"type": "hello", "token": None})
        tab.welcome = await tab.next("welcome")
        bad = [
            ("not json at all", "not_json"),
            ("[1, 2, 3]", "not_object"),
            ({"type": "teleport"}, "unknown_type"),
            ({"type": "message", "id": 42, "text": "hi"}, "bad_field"),
            ({"type": "message", "id": "abcdefgh", "text": {"nested": True}}, "bad_field"),
            ({"type": "feedback", "answer": "not-an-answer", "vote": "up"}, "bad_field"),
            ({"type": "feedback", "answer": f"{new_visitor()}:abcdefgh", "vote": "up"}, "bad_field"),  # someone else's
            ({"type": "hello", "token": None}, "hello_again"),
        ]
        for frame, code in bad:
            await tab.send(frame)
            error = await tab.next("error")
            assert (error["code"], error["text"]) == (code, messages.WEB_BAD_FRAME), frame
        await ws.send_bytes(b"\x00\x01binary")
        assert await tab.next("error") == {"type": "error", "code": "binary", "text": messages.NO_TEXT}
        logged = [r.getMessage() for r in caplog.records]
        assert sum("bad frame" in line for line in logged) == len(bad) + 1
        assert any("binary frame" in line for line in logged)
        # Still open, and still the same conversation: a good message goes in.
        await tab.say("still here?", id="abcdefgh")
        ack = await taken_and_failed(tab, "abcdefgh")
        assert ack["answer"] == f"{tab.conversation}:abcdefgh"


async def test_a_frame_over_the_size_limit_closes_the_socket_with_1009_and_a_log_line(stack_for, caplog):
    caplog.set_level(logging.WARNING, logger="adapters.web")
    async with stack_for() as stack:
        tab = await stack.connect()
        await tab.say("x" * (2 * 1024 * 1024))
        msg = await tab.ws.receive()
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert tab.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        async with asyncio.timeout(30):
            while not any("failed" in r.getMessage() and tab.conversation in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.05)


async def test_a_message_over_max_message_chars_is_refused_clearly_and_never_queued(stack_for):
    async with stack_for(max_message_chars=50) as stack:
        tab = await stack.connect()
        await tab.say("y" * 51, id="toolong1")
        error = await tab.next("error")
        expected = messages.for_user(InputRejected("too_long", length=51, limit=50))
        assert error == {"type": "error", "code": "rejected", "text": expected, "id": "toolong1"}
        await tab.say("   ", id="blank001")
        assert (await tab.next("error"))["text"] == messages.for_user(InputRejected("empty"))
        await tab.say("y" * 50, id="fits0001")  # exactly the limit goes in
        await taken_and_failed(tab, "fits0001")
        assert await dedupe_claimed(stack, f"{tab.conversation}:fits0001")
        assert not await dedupe_claimed(stack, f"{tab.conversation}:toolong1")  # taken in order: it never went in


async def test_visitor_rate_limit_refuses_with_a_clear_message(stack_for, caplog):
    caplog.set_level(logging.WARNING, logger="adapters.web")
    async with stack_for(visitor_rate=2, ip_rate=100) as stack:
        tab = await stack.connect()
        for i in range(2):
            await tab.say(f"message {i}", id=f"rate000{i}")
            await taken_and_failed(tab, f"rate000{i}")
        await tab.say("one too many", id="rate0002")
        error = await tab.next("error")
        assert error["code"] == "rate_limited" and "id" not in error  # refused unread
        assert 0 < error["retry_after"] <= 60 and error["text"] == messages.web_rate_limited(error["retry_after"])
        assert any(
            f"visitor:{tab.conversation} is over its limit of 2 a minute" in r.getMessage() for r in caplog.records
        )
        # Another visitor is not held back by this one.
        other = await stack.connect()
        await other.say("my first", id="other001")
        await taken_and_failed(other, "other001")


async def refused_hello(stack, *, headers: dict[str, str] | None = None) -> dict:
    """A new socket whose hello is over its address's limit: the refusal, then close code 1013."""
    tab = Tab(await stack.open(headers=headers), {})
    await tab.send({"type": "hello", "token": None})
    error = await tab.next("error")
    with pytest.raises(ConnectionError):
        await tab.next()
    assert tab.ws.close_code == aiohttp.WSCloseCode.TRY_AGAIN_LATER
    return error


async def test_ip_rate_limit_counts_every_visitor_behind_one_address(stack_for):
    async with stack_for(visitor_rate=100, ip_rate=5) as stack:
        a, b = await stack.connect(), await stack.connect()  # two hellos
        for i, tab in enumerate((a, b, a)):  # three messages
            await tab.say("hello", id=f"iprate0{i}")
            await taken_and_failed(tab, f"iprate0{i}")
        await b.say("hello", id="iprate03")
        error = await b.next("error")
        assert error["code"] == "rate_limited" and error["text"].startswith("You're sending messages faster")
        assert (await refused_hello(stack))["code"] == "rate_limited"  # greetings count too


async def test_behind_a_proxy_the_forwarded_address_is_the_one_limited(stack_for):
    async with stack_for(visitor_rate=100, ip_rate=2, proxy_hops=1) as stack:
        alice = {"X-Forwarded-For": "198.51.100.1"}
        bob = {"X-Forwarded-For": "1.1.1.1, 198.51.100.2"}  # a spoofed first entry changes nothing
        a, b = await stack.connect(headers=alice), await stack.connect(headers=bob)
        await a.say("hi", id="proxy-a01")  # alice's second frame: her hello was the first
        await taken_and_failed(a, "proxy-a01")
        await b.say("hi", id="proxy-b01")  # another address behind the same proxy peer
        await taken_and_failed(b, "proxy-b01")
        error = await refused_hello(stack, headers={"X-Forwarded-For": "9.9.9.9, 198.51.100.1"})
        assert error["code"] == "rate_limited"


async def test_feedback_becomes_a_turn_for_the_dialogue_manager(stack_for):
    async with stack_for() as stack:
        tab = await stack.connect()
        await tab.say("rate me", id="vote0001")
        ack = await taken_and_failed(tab, "vote0001")
        await tab.send({"type": "feedback", "answer": ack["answer"], "vote": "up", "id": "click-0001"})
        assert await tab.next("voted") == {"type": "voted", "answer": ack["answer"], "vote": "up"}
        async with asyncio.timeout(60):  # the worker claims the feedback turn's event id
            while not await dedupe_claimed(stack, f"{ack['answer']}:feedback:click-0001"):
                await asyncio.sleep(0.05)


async def test_a_message_while_shutting_down_is_answered_with_restarting(make_settings):
    settings = make_settings(llm_url="http://127.0.0.1:9/v1", web=web_settings())
    async with open_runtime(settings) as runtime, aiohttp.ClientSession() as session:
        adapter = adapters.web.create(runtime.adapter_context())
        inbox = MemoryInbox(10)
        await inbox.close()  # as bot.server does once intake has stopped
        server = asyncio.create_task(adapter.run(inbox))
        try:
            await asyncio.wait_for(adapter.ready.wait(), 60)
            ws = await session.ws_connect(f"ws://127.0.0.1:{adapter.port}/ws")
            tab = Tab(ws, {})
            await tab.send({"type": "hello", "token": None})
            await tab.next("welcome")
            await tab.say("anyone there?", id="late0001")
            assert await tab.next("error") == {
                "type": "error",
                "code": "restarting",
                "text": messages.WEB_RESTARTING,
                "id": "late0001",
            }
            closing = asyncio.create_task(ws.receive())  # a browser is always reading
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)
            await adapter.aclose()
        # aclose closed the socket with "service restart", which the widget reconnects after.
        msg = await closing
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, aiohttp.WSCloseCode.SERVICE_RESTART)


async def test_disabled_without_the_setting(make_settings):
    async with open_runtime(make_settings(llm_url="http://127.0.0.1:9/v1")) as runtime:
        assert adapters.web.create(runtime.adapter_context()) is None
