"""A scripted stand-in for the layer below the LLM client: an aiohttp server that speaks the
OpenAI-compatible protocol vLLM serves (model list, streamed chat completions with usage,
constrained choices and JSON, tool calls, /tokenize, /health, and /metrics with vLLM's token
counters: prompt tokens count as prefix-cache queries, never as hits, since it has no cache)
and answers from a script at once.

It lets tests of the layers above (adapters, inbox, dialogue) run without the CPU engine,
and `parley loadtest --standin` measure Parley's own share of a turn; the LLM client keeps its
own tests against the real vLLM. Every request body is recorded, so a test can check the
prompt that would have reached the engine, and each streamed answer's arrival and first token
are stamped on the host's monotonic clock (`Streamed`), which a client on the same host can
compare with its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

MODEL = "standin"


@dataclass(frozen=True, slots=True)
class Streamed:
    """One streamed answer: its prompt's last message, when the request arrived and when its
    first token was written (`time.monotonic()`, comparable across processes of one host)."""

    last: str
    received: float
    first_token: float


class ScriptedEngine:
    """Answers every chat completion with `answer`, streamed a word at a time; with
    `token_delay`, that many seconds pass before each word (a model's decode pace)."""

    def __init__(
        self,
        answer: str = "Scripted answer.",
        *,
        decisions: list[Any] | None = None,
        token_delay: float = 0.0,
        keep_requests: bool = True,
    ) -> None:
        self.answer = answer
        # The action decisions (`{"calls": [...]}`) that structured-output JSON requests, or
        # requests with `tools` (as tool calls), get in order; once used up, nothing to call.
        self.decisions = list(decisions or [])
        self.token_delay = token_delay
        self.keep_requests = keep_requests  # off for long load tests: bodies with history add up
        self.requests: list[dict[str, Any]] = []  # chat completion bodies, in arrival order
        self.streamed: list[Streamed] = []  # streamed answers, in order of their first token
        self.prompt_tokens = 0  # over every chat completion, for /metrics
        self.generated_tokens = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
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

    async def _metrics(self, request: web.Request) -> web.Response:
        label = f'{{model_name="{MODEL}"}}'
        return web.Response(
            text=f"vllm:generation_tokens_total{label} {self.generated_tokens}\n"
            f"vllm:prefix_cache_queries_total{label} {self.prompt_tokens}\n"
            f"vllm:prefix_cache_hits_total{label} 0\n"
        )

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"count": len(body.get("prompt", "").split()) + 1})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        received = time.monotonic()
        body = await request.json()
        if self.keep_requests:
            self.requests.append(body)
        words = self.answer.split(" ")
        usage = {
            "prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in body["messages"]),
            "completion_tokens": len(words),
        }
        self.prompt_tokens += usage["prompt_tokens"]
        constraint = body.get("structured_outputs") or {}
        if "choice" in constraint:
            message: dict[str, Any] = {"role": "assistant", "content": constraint["choice"][0]}
            return web.json_response(
                {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}
            )
        if "json" in constraint or "tools" in body:
            decision = self.decisions.pop(0) if self.decisions else {"calls": []}
            message = {"role": "assistant", "content": json.dumps(decision)}
            if "tools" in body:  # native tool calling: the calls as vLLM's parser returns them
                message["content"] = None
                message["tool_calls"] = [
                    {
                        "id": f"call-{n}",
                        "type": "function",
                        "function": {"name": c["action"], "arguments": json.dumps(c["arguments"])},
                    }
                    for n, c in enumerate(decision["calls"])
                ]
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
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            delta = {"content": word if n == 0 else " " + word}
            await response.write(_event({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
            if n == 0:
                last = str(body["messages"][-1].get("content", "")) if body["messages"] else ""
                self.streamed.append(Streamed(last, received, time.monotonic()))
        await response.write(_event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        self.generated_tokens += len(words)
        await response.write(_event({"choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"
