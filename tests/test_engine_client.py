"""The LLM client against the real vLLM CPU engine serving the random-weight demo model."""

import asyncio

import aiohttp
import pytest

from bot.config import LLMSettings
from bot.llm.client import LLMClient
from bot.tools.bench import prometheus_sum
from tests.test_engines import proxy_to

pytestmark = pytest.mark.engine

LABELS = ["qa", "translate", "chat"]


def settings(**overrides):
    values = {"max_tokens": 16, "extra_body": {"ignore_eos": True}} | overrides
    return LLMSettings(_env_file=None, **values)


async def test_model_is_discovered_and_tokens_are_counted(engine):
    async with LLMClient(settings(), base_url=engine) as llm:
        assert await llm.model() == "parley-demo"
        assert await llm.health() == {engine: True}
        short, long = await llm.count_tokens("hello"), await llm.count_tokens("hello " * 50)
        assert 0 < short < long


async def test_tokens_are_counted_in_process_with_the_served_models_tokenizer(engine):
    texts = ["hello", "Grüße aus Köln — ça va? 🎉", "def f(x):\n    return x * 2\n" * 20, ""]
    # The configured model name skips discovery, so this client has only /tokenize.
    async with LLMClient(settings(model="parley-demo"), base_url=engine) as remote:
        expected = [await remote.count_tokens(t) for t in texts]
    proxy = await proxy_to(engine)
    async with LLMClient(settings(), base_url=f"http://127.0.0.1:{proxy.port}/v1") as llm:
        assert await llm.model() == "parley-demo"  # the engine says where the model lives
        await proxy.stop()
        # The engine is out of reach now: the counts come from the tokenizer in process.
        assert [await llm.count_tokens(t) for t in texts] == expected
    assert expected[0] > 0 and expected[2] > expected[1] > expected[0] and expected[3] == 0


async def test_stream_yields_many_deltas_and_reports_usage(engine):
    async with (
        LLMClient(settings(), base_url=engine) as llm,
        llm.stream([{"role": "user", "content": "Tell me a story"}], max_tokens=20) as stream,
    ):
        deltas = [d async for d in stream]
    assert len(deltas) >= 10  # token by token, not one blob at the end
    assert stream.usage.completion_tokens == 20
    assert stream.finish_reason == "length"


async def test_structured_choice_is_constrained_where_a_free_answer_is_not(engine):
    async with LLMClient(settings(), base_url=engine) as llm:
        prompts = [[{"role": "user", "content": f"Which intent is message number {i}?"}] for i in range(12)]
        choices = await asyncio.gather(*(llm.choose(p, LABELS) for p in prompts))
        assert set(choices) <= set(LABELS)
        # The control: the same prompts unconstrained (and with the retired `guided_choice`
        # field, which vLLM 0.32 accepts and ignores) are not labels. This is what proves
        # the constraint is doing the work.
        async with aiohttp.ClientSession() as http:
            free = []
            for p in prompts[:4]:
                body = {"model": "parley-demo", "messages": p, "max_tokens": 8, "guided_choice": LABELS}
                async with http.post(f"{engine}/chat/completions", json=body) as response:
                    answer = await response.json()
                free.append(answer["choices"][0]["message"]["content"].strip())
        assert not set(free) <= set(LABELS)


async def test_closing_a_stream_early_aborts_the_request_in_the_engine(engine):
    async with LLMClient(settings(), base_url=engine) as llm:
        async with llm.stream([{"role": "user", "content": "long"}], max_tokens=4000) as stream:
            async for _ in stream:
                break
        for _ in range(50):
            running = prometheus_sum(await llm.metrics_text(), "vllm:num_requests_running")
            if running == 0:
                break
            await asyncio.sleep(0.1)
        assert running == 0
