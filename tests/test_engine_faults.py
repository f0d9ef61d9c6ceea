"""The engine goes away and comes back: users are told clearly, and the bot recovers by itself."""

import time
import uuid
from urllib.parse import urlsplit

import pytest

from bot import messages
from bot.config import LLMSettings
from bot.engine.launcher import free_port
from bot.errors import EngineTimeout, EngineUnavailable
from bot.runtime import open_runtime
from bot.turns import Outcome, Turn
from tests.tcp_proxy import TcpProxy
from tests.test_dialogue import RecordingSink

pytestmark = pytest.mark.engine


def make_turn(text):
    return Turn(platform="test", tenant="T1", channel="faults", user="U1", text=text, event_id=uuid.uuid4().hex)


async def test_engine_down_then_back(engine, make_settings):
    target = urlsplit(engine)
    proxy = TcpProxy(target.hostname, target.port, free_port())
    await proxy.start()
    llm = LLMSettings(
        _env_file=None,
        max_tokens=8,
        extra_body={"ignore_eos": True},
        model="parley-demo",
        connect_timeout=1,
        read_timeout=2,
        total_timeout=5,
        retries=0,
        breaker_threshold=10,
    )  # the breaker has its own test (test_engines.py)
    async with open_runtime(make_settings(llm_url=f"http://127.0.0.1:{proxy.port}/v1", llm=llm)) as rt:
        assert (await rt.manager.handle(make_turn("up"), RecordingSink())).outcome is Outcome.ANSWERED

        await proxy.stop()  # refused connections
        sink = RecordingSink()
        reply = await rt.manager.handle(make_turn("are you there?"), sink)
        assert reply.outcome is Outcome.FAILED and reply.error == "EngineUnavailable"
        assert sink.text == messages.for_user(EngineUnavailable("x"))

        proxy.hang = True  # accepts, never answers: the read timeout must end the wait
        await proxy.start()
        sink = RecordingSink()
        started = time.monotonic()
        reply = await rt.manager.handle(make_turn("hello?"), sink)
        assert time.monotonic() - started < 5 + 3  # within the total timeout (plus slack for a loaded CI box)
        assert reply.outcome is Outcome.FAILED and reply.error == "EngineTimeout"
        assert sink.text == messages.for_user(EngineTimeout("x", phase="read", timeout=2))

        await proxy.stop()
        proxy.hang = False
        await proxy.start()  # back: no restart of the bot needed
        reply = await rt.manager.handle(make_turn("and now?"), RecordingSink())
        assert reply.outcome is Outcome.ANSWERED
        # The failed turns were still recorded, so the conversation reads as it happened.
        users = [m.content for m in (await rt.store.load(make_turn("x").key)).messages if m.role == "user"]
        assert users == ["up", "are you there?", "hello?", "and now?"]
    await proxy.stop()
