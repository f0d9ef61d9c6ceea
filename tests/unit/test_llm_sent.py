"""`CallScope.sent`: a caller learns when its streamed request has left, before the engine
answers, or at once when the request must wait for a free slot. A loopback server that
holds its answer back stands in for a busy engine."""

import asyncio

from aiohttp import web

from bot.config import LLMSettings
from bot.llm.client import CallScope, LLMClient


async def test_request_sent_is_set_when_written_not_when_answered_and_at_once_when_queued(loopback):
    received, answer = asyncio.Event(), asyncio.Event()

    async def completions(request: web.Request) -> web.StreamResponse:
        await request.read()
        received.set()
        await answer.wait()  # the engine is busy: nothing comes back yet
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: [DONE]\n\n')
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    settings = LLMSettings(_env_file=None, model="m", max_concurrency=1)
    async with loopback(app) as url, LLMClient(settings, base_url=url) as llm:

        async def ask(sent: asyncio.Event) -> str:
            async with llm.stream([{"role": "user", "content": "hello"}], scope=CallScope(sent=sent)) as stream:
                return "".join([d async for d in stream])

        first, second = asyncio.Event(), asyncio.Event()
        one = asyncio.create_task(ask(first))
        await asyncio.wait_for(received.wait(), 5)
        await asyncio.wait_for(first.wait(), 5)
        assert not answer.is_set()  # set on the way out, long before any answer
        two = asyncio.create_task(ask(second))
        await asyncio.wait_for(second.wait(), 5)  # the only slot is taken: nobody waits for it
        answer.set()
        assert await asyncio.gather(one, two) == ["hi", "hi"]
