"""`run_adapters`: one adapter's failure never stops the others, and a process with nothing left
serving ends with that failure instead of hanging. Real Redis inbox and dialogue workers; a
scripted engine stand-in below the LLM client."""

from __future__ import annotations

import asyncio

import pytest

from bot.reply import NO_JOURNAL
from bot.runtime import open_runtime
from bot.server import run_adapters
from tests.standin import ScriptedEngine
from tests.test_dialogue import RecordingSink, make_turn


class LoginRefused(Exception):
    pass


class Broken:
    """An adapter whose platform refuses it at start-up (a revoked token, say)."""

    platform = "broken"

    async def run(self, inbox):
        raise LoginRefused("invalid_auth")

    def sink_for(self, turn, journal=NO_JOURNAL):
        return RecordingSink()


class Working:
    """An adapter that hands one `help` turn to the inbox and then waits for more."""

    platform = "test"

    def __init__(self):
        self.sink = RecordingSink()

    async def run(self, inbox):
        await inbox.put(make_turn("help", command="help"))
        await asyncio.Event().wait()

    def sink_for(self, turn, journal=NO_JOURNAL):
        return self.sink


@pytest.fixture
async def standin():
    async with ScriptedEngine().serving() as url:
        yield url


async def test_an_adapter_that_fails_leaves_the_others_serving(make_settings, standin):
    async with open_runtime(make_settings(llm_url=standin)) as runtime:
        working, stop = Working(), asyncio.Event()
        server = asyncio.create_task(run_adapters(runtime, [Broken(), working], stop=stop))
        async with asyncio.timeout(60):
            while not working.sink.sent:
                assert not server.done(), "the server stopped with the broken adapter"
                await asyncio.sleep(0.02)
        assert "stopped: LoginRefused: invalid_auth" in runtime.degraded.problems()["broken:adapter"]
        stop.set()
        async with asyncio.timeout(60):
            await server  # ends cleanly: the working adapter was still serving


async def test_with_every_adapter_failed_serve_ends_with_the_error(make_settings, standin):
    async with open_runtime(make_settings(llm_url=standin)) as runtime:
        with pytest.raises(LoginRefused):
            async with asyncio.timeout(60):  # before the fix: workers that swallowed their cancellation hung here
                await run_adapters(runtime, [Broken()], stop=asyncio.Event())
