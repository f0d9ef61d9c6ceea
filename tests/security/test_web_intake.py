"""The web chat against an anonymous visitor who sends what the widget never would (issue 12,
item 11): floods of malformed frames, frames before hello, oversized frames, and requests for
a person one after another. Parley's real serving path with real Redis, the real Slack desk
posting into the fake Slack; the engine is unreachable (no test here needs an answer).
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.desk import SlackDesk
from adapters.web import tokens
from bot import messages
from bot.config import HandoffSettings
from tests.slack.conftest import BOT_TOKEN, fake_slack  # noqa: F401 - the fake Slack fixture
from tests.slack.fake import FakeSlack
from tests.web.conftest import DEAD_LLM, Tab, serving, stack_for, web_settings  # noqa: F401 - stack_for: a fixture

SUPPORT = "CSUPPORT"
ASK = "I want to talk to a person"


async def test_a_flood_of_malformed_frames_counts_against_the_limit_before_it_is_read(stack_for, caplog):
    caplog.set_level(logging.INFO, logger="adapters.web")
    async with stack_for(visitor_rate=5, ip_rate=1000) as stack:
        tab = await stack.connect()
        for _ in range(8):
            await tab.send("{not json")
        codes = [(await tab.next("error"))["code"] for _ in range(8)]
        assert codes == ["not_json"] * 5 + ["rate_limited"] * 3
        # Refused unread: no "bad frame" line (nor error frame) for the frames over the limit.
        assert sum("bad frame" in r.getMessage() for r in caplog.records) == 5
        await tab.ws.send_bytes(b"\x00" * 100)  # binary frames count too
        assert (await tab.next("error"))["code"] == "rate_limited"


async def test_frames_before_hello_count_and_a_flood_closes_the_socket(stack_for):
    async with stack_for(ip_rate=3) as stack:
        tab = Tab(await stack.open(), {})
        for frame in ("garbage", '{"type": "message", "id": "abcdefgh", "text": "hi"}', "[]"):
            await tab.send(frame)
            assert (await tab.next("error"))["code"] in ("not_json", "hello_first", "not_object")
        await tab.send({"type": "hello", "token": None})  # the fourth frame from this address in a minute
        assert (await tab.next("error"))["code"] == "rate_limited"
        with pytest.raises(ConnectionError):
            await tab.next()
        assert tab.ws.close_code == aiohttp.WSCloseCode.TRY_AGAIN_LATER


async def test_an_oversized_frame_closes_the_socket_unread_and_a_message_at_the_limit_fits(stack_for, caplog):
    caplog.set_level(logging.INFO, logger="adapters.web")
    limit = 50
    async with stack_for(max_message_chars=limit) as stack:
        tab = await stack.connect()
        # A message at the limit fits however a client encodes it (every character an escaped
        # surrogate pair: 12 bytes); one over it gets the clear "too long" on an open socket.
        await tab.send(
            json.dumps({"type": "message", "id": "fits0001", "text": "\U0001f600" * limit}, ensure_ascii=True)
        )
        assert (await tab.next("ack", "error"))["type"] == "ack"
        await tab.send(
            json.dumps({"type": "message", "id": "long0001", "text": "\U0001f600" * (limit + 1)}, ensure_ascii=True)
        )
        error = await tab.next("error")
        assert (error["code"], error["id"]) == ("rejected", "long0001")
        # Far beyond any message within the limit: the socket is closed from the frame's header on.
        frame = {"type": "message", "id": "huge0001", "text": ""}
        frame["text"] = "x" * (limit * 12 + 2048 - len(json.dumps(frame)))
        await tab.send(json.dumps(frame))
        with pytest.raises(ConnectionError):
            await tab.next("ack", "error")
        assert tab.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        async with asyncio.timeout(30):  # the log line says so ...
            while not any("socket of visitor" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.05)
        logged = [r.getMessage() for r in caplog.records]  # ... and nothing in the frame was read
        assert sum("message refused" in line for line in logged) == 1 and not any("huge0001" in line for line in logged)


async def ask_for_a_person(stack, *, address: str) -> tuple[Tab, str]:
    """A new visitor behind `address` asks for a person; returns the tab and the notice it got."""
    tab = await stack.connect(headers={"X-Forwarded-For": address})
    await tab.say(ASK, id="ask-00001")
    return tab, (await tab.next("message"))["text"]


def refused(notice: str) -> bool:
    return notice != messages.HANDED_OFF and notice == messages.HANDOFF_CAPPED


async def test_handoffs_are_capped_per_visitor_address_and_site(make_settings, fake_slack: FakeSlack, caplog):
    caplog.set_level(logging.INFO)
    web = web_settings(proxy_hops=1, visitor_rate=100, ip_rate=100, visitor_handoffs=1, ip_handoffs=2, site_handoffs=3)
    settings = make_settings(llm_url=DEAD_LLM, web=web, handoff=HandoffSettings(_env_file=None, slack_channel=SUPPORT))
    async with serving(settings) as stack:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
        stack.runtime.desks["slack"] = SlackDesk(
            client, channel=SUPPORT, store=stack.runtime.tickets, links=stack.runtime.links, limit=3000
        )

        first, notice = await ask_for_a_person(stack, address="198.51.100.1")
        assert notice == messages.HANDED_OFF
        # The people hand it back; the same visitor asks again within the hour: over its cap.
        ticket = await stack.runtime.tickets.ticket(stack.key(first.visitor))
        assert ticket is not None
        resolve = ticket.turn(command="resolve", user="UAGENT", text="resolve", event_id="Ev-r1", agent="Ann")
        await stack.runtime.manager.handle(resolve, stack.adapter.sink_for(resolve))
        assert (await first.next("message"))["text"] == messages.HANDED_BACK
        await first.say(ASK, id="ask-00002")
        assert refused((await first.next("message"))["text"])

        # A new visitor is one reload away, but not a new address.
        assert (await ask_for_a_person(stack, address="198.51.100.1"))[1] == messages.HANDED_OFF
        assert refused((await ask_for_a_person(stack, address="198.51.100.1"))[1])

        # And however many addresses, the site as a whole has its cap.
        assert (await ask_for_a_person(stack, address="203.0.113.7"))[1] == messages.HANDED_OFF
        assert refused((await ask_for_a_person(stack, address="203.0.113.8"))[1])

        heads = fake_slack.in_thread(SUPPORT, None)
        assert len(heads) == 3  # tickets opened: exactly what the caps allowed
        # Each refusal is logged with the cap it hit, and is a turn that ended "rejected" (the last
        # one's lines come just after the visitor was told).
        conversation = tokens.conversation_id(first.visitor)
        caps = [
            f"visitor:{conversation} is over its cap of 1 an hour",
            "ip:198.51.100.1 is over its cap of 2 an hour",
            "site:shop is over its cap of 3 an hour",
        ]
        async with asyncio.timeout(60):
            while sum(r.getMessage().startswith("turn rejected") for r in caplog.records) < 3:
                await asyncio.sleep(0.05)
        logged = [r.getMessage() for r in caplog.records]
        assert all(any(cap in line for line in logged) for cap in caps), caps

        # The ticket names the conversation by a hash, never by the id inside the visitor's token.
        assert conversation in heads[0].text and first.visitor not in heads[0].text
