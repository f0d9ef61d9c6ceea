"""The operations endpoint of `parley serve`, over HTTP, with real Redis and the real engine."""

import asyncio

import aiohttp
import pytest

from bot.config import OpsSettings
from bot.reply import NO_JOURNAL
from bot.runtime import open_runtime
from bot.server import run_adapters
from tests.test_dialogue import RecordingSink, make_turn

pytestmark = pytest.mark.engine


class Quiet:
    """An adapter that receives nothing and is connected once `ready` is set."""

    platform = "quiet"

    def __init__(self):
        self.ready = asyncio.Event()

    async def run(self, inbox):
        await asyncio.Event().wait()

    def sink_for(self, turn, journal=NO_JOURNAL):
        return RecordingSink()


async def test_health_readiness_and_metrics(engine, make_settings):
    settings = make_settings(llm_url=engine, ops=OpsSettings(_env_file=None, host="127.0.0.1", port=0))
    async with open_runtime(settings) as rt:
        await rt.manager.handle(make_turn("count me"), RecordingSink())
        adapter, stop = Quiet(), asyncio.Event()
        server = asyncio.create_task(run_adapters(rt, [adapter], stop=stop, ops=True))
        port = None
        for _ in range(100):
            await asyncio.sleep(0.05)
            if rt.metrics.ops_port:
                port = rt.metrics.ops_port
                break
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
            async with http.get("/healthz") as health:
                assert health.status == 200
            async with http.get("/readyz") as not_ready:
                assert not_ready.status == 503
                assert await not_ready.json() == {"redis": True, "llm": True, "adapter:quiet": False}
            adapter.ready.set()
            async with http.get("/readyz") as ready:
                assert ready.status == 200
            async with http.get("/metrics") as metrics:
                text = await metrics.text()
        stop.set()
        await server
    assert 'parley_turns_total{outcome="answered",platform="test"} 1.0' in text
    assert "parley_inbox_depth 0.0" in text
    assert "parley_llm_requests_in_flight 0.0" in text
    assert f'parley_engine_circuit{{engine="{engine}",state="closed"}} 1.0' in text
    assert 'parley_llm_tokens_total{kind="completion"} 12.0' in text
