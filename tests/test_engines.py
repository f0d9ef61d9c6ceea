"""Several engines: conversations stick to one (prefix cache), fail over, and breakers guard
them. Over real vLLM CPU engines, with loopback proxies to take an engine away."""

import uuid
from urllib.parse import urlsplit

import pytest

from bot.config import LLMSettings
from bot.engine.launcher import free_port, local_engine
from bot.errors import EngineUnavailable
from bot.runtime import open_runtime
from bot.tools.bench import prometheus_sum
from bot.turns import Outcome, Turn
from tests.conftest import engine_settings
from tests.tcp_proxy import TcpProxy
from tests.test_dialogue import RecordingSink

pytestmark = pytest.mark.engine


def make_turn(text, channel):
    return Turn(platform="test", tenant="T1", channel=channel, user="U1", text=text, event_id=uuid.uuid4().hex)


def llm_settings(**overrides):
    values = dict(
        max_tokens=24,
        extra_body={"ignore_eos": True},
        model="parley-demo",
        connect_timeout=2,
        read_timeout=20,
        total_timeout=60,
        retries=1,
        breaker_threshold=2,
        breaker_cooldown=0.5,
    )
    return LLMSettings(_env_file=None, **(values | overrides))


async def proxy_to(url):
    target = urlsplit(url)
    proxy = TcpProxy(target.hostname, target.port, free_port())
    await proxy.start()
    return proxy


async def test_breaker_answers_at_once_while_down_and_probes_the_engine_back(engine, make_settings):
    proxy = await proxy_to(engine)
    url = f"http://127.0.0.1:{proxy.port}/v1"
    async with open_runtime(make_settings(llm_url=url, llm=llm_settings(retries=0))) as rt:
        assert (await rt.manager.handle(make_turn("up", "breaker"), RecordingSink())).outcome is Outcome.ANSWERED
        await proxy.stop()
        for _ in range(2):  # two refused connections reach the threshold
            assert (
                await rt.manager.handle(make_turn("down?", "breaker"), RecordingSink())
            ).error == "EngineUnavailable"
        assert rt.llm.circuits() == {url: "open"}
        with pytest.raises(EngineUnavailable, match="circuit open"):  # no connection is even tried
            await rt.llm.count_tokens("x")
        await proxy.start()
        import asyncio

        await asyncio.sleep(0.6)  # the cooldown passes; the next turn probes /health first
        assert (await rt.manager.handle(make_turn("back?", "breaker"), RecordingSink())).outcome is Outcome.ANSWERED
        assert rt.llm.circuits() == {url: "closed"}
    await proxy.stop()


async def test_conversations_fail_over_to_their_next_engine_while_theirs_is_down(engine, make_settings):
    proxies = [await proxy_to(engine), await proxy_to(engine)]
    urls = [f"http://127.0.0.1:{p.port}/v1" for p in proxies]
    async with open_runtime(make_settings(llm_url=",".join(urls), llm=llm_settings(breaker_cooldown=60))) as rt:
        channels = [f"fo{i}" for i in range(8)]
        await proxies[0].stop()
        replies = [await rt.manager.handle(make_turn("hello", c), RecordingSink()) for c in channels]
        assert all(r.outcome is Outcome.ANSWERED for r in replies)  # every conversation was answered
        assert rt.llm.circuits()[urls[0]] == "open"
    await proxies[1].stop()


async def test_affinity_keeps_the_prefix_cache_as_one_engine_does_and_round_robin_does_not(engine, make_settings):
    async with local_engine(engine_settings()) as second:

        async def hit_rate(urls, sticky):
            settings = make_settings(llm_url=",".join(urls), llm=llm_settings(sticky=sticky))
            async with open_runtime(settings) as rt:
                before = await rt.llm.metrics_text()
                run = uuid.uuid4().hex[:6]
                for turn in range(5):
                    for conv in range(5):  # odd, so round-robin does not happen to pin each one
                        text = f"[{run}/{conv}/{turn}] How do I rotate the API keys for staging without any downtime?"
                        reply = await rt.manager.handle(make_turn(text, f"{run}-{conv}"), RecordingSink())
                        assert reply.outcome is Outcome.ANSWERED
                after = await rt.llm.metrics_text()

            def delta(name):
                return prometheus_sum(after, name) - prometheus_sum(before, name)

            return delta("vllm:prefix_cache_hits_total") / delta("vllm:prefix_cache_queries_total")

        one = await hit_rate([engine], sticky=True)
        sticky = await hit_rate([engine, second], sticky=True)
        round_robin = await hit_rate([engine, second], sticky=False)
        print(
            f"\nprefix-cache hit rate: one engine {one:.1%}, two with affinity {sticky:.1%}, "
            f"two round-robin {round_robin:.1%}"
        )
        assert sticky >= one - 0.05
        assert round_robin < sticky
