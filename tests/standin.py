"""A scripted stand-in for the layer below the LLM client: an aiohttp server that speaks the
OpenAI-compatible protocol vLLM serves (model list, streamed chat completions with usage,
constrained choices, /tokenize, /health) and answers from a script at once.

It lets tests of the layers above (adapters, inbox, dialogue) run without the CPU engine;
the LLM client keeps its own tests against the real vLLM. Every request body is recorded,
so a test can check the prompt that would have reached the engine.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

MODEL = "standin"


class ScriptedEngine:
    """Answers every chat completion with `answer`, streamed a word at a time."""

    def __init__(self, answer: str = "Scripted answer.") -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []  # chat completion bodies, in arrival order

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/v1/chat/completions", self._complete)
        return app

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Serve on a free loopback port; yields the `/v1` base URL."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # aiohttp has no public accessor
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            await runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"count": len(body.get("prompt", "").split()) + 1})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        words = self.answer.split(" ")
        usage = {
            "prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in body["messages"]),
            "completion_tokens": len(words),
        }
        if choice := (body.get("structured_outputs") or {}).get("choice"):
            message = {"role": "assistant", "content": choice[0]}
            return web.json_response(
                {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}
            )
        if not body.get("stream"):
            message = {"role": "assistant", "content": self.answer}
            return web.json_response(
                {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n, word in enumerate(words):
            delta = {"content": word if n == 0 else " " + word}
            await response.write(_event({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
        await response.write(_event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        await response.write(_event({"choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"
