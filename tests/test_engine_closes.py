"""A burst of connections the engine closes unanswered (a stalled front end's idle timer, or
keep-alives it timed out as they were reused) is retried on fresh connections: every turn is
answered, and the engine is not taken out of use as if it were down."""

import asyncio
from collections.abc import Callable

from bot.config import Settings
from bot.engine.launcher import free_port
from bot.runtime import open_runtime
from bot.tools.standin import ScriptedEngine
from bot.turns import Outcome, Turn
from tests.tcp_proxy import TcpProxy
from tests.test_dialogue import RecordingSink


async def test_sixteen_turns_whose_connections_are_all_closed_at_once_are_answered(
    make_settings: Callable[..., Settings],
) -> None:
    engine = ScriptedEngine("still here")
    async with engine.serving() as url:
        target = url.removeprefix("http://").removesuffix("/v1").split(":")
        proxy = TcpProxy(target[0], int(target[1]), free_port())
        await proxy.start()
        try:
            settings = make_settings(llm_url=f"http://127.0.0.1:{proxy.port}/v1")
            settings.llm.breaker_threshold = 3
            async with open_runtime(settings) as rt:
                proxy.drop = 16  # every request of the burst
                turns = [
                    Turn(platform="test", tenant="t", channel=f"c{i}", user="u", text="hi", event_id=f"e{i}")
                    for i in range(16)
                ]
                replies = await asyncio.gather(*(rt.manager.handle(turn, RecordingSink()) for turn in turns))
                assert [r.outcome for r in replies] == [Outcome.ANSWERED] * 16
                assert proxy.drop == 0 and len(engine.streamed) == 16
                assert set(rt.llm.circuits().values()) == {"closed"}

                proxy.drop = 2  # closed again on the retry: the turn fails, clearly, after `retries`
                reply = await rt.manager.handle(
                    Turn(platform="test", tenant="t", channel="c", user="u", text="hi", event_id="e"), RecordingSink()
                )
                assert (reply.outcome, reply.error) == (Outcome.FAILED, "EngineUnavailable")
        finally:
            await proxy.stop()
