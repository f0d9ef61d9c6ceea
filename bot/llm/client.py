"""The LLM client: the only code that talks to vLLM.

Why aiohttp and not the `openai` package: Parley needs more of vLLM than the OpenAI
surface (`/tokenize`, `/health`, `/metrics`, the `structured_outputs` and
`ignore_eos` extensions), wants its own connect/read/total timeouts and retry
rules rather than the SDK's hidden retries, and must map every failure to
Parley's error tree with the status and Retry-After in hand. One
`aiohttp.ClientSession` serves all of that over one connection pool; the SSE
framing of a chat stream is a few lines. Why not httpx (which the SDK uses):
every streamed chunk passes through httpcore, h11 and anyio's cancel scopes.
Reading a 48-chunk stream costs ~9.6 ms of CPU with httpx and ~3.2 ms with
aiohttp (8 concurrent streams from a loopback SSE server), and that CPU is taken
from the event loop that starts every other turn.

Closing a stream (leaving `async with client.stream(...)`, or the consumer
stopping early) closes the HTTP connection, and vLLM aborts the request and
frees its KV cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tokenizers import Tokenizer

from bot.config import LLMSettings, tokenizer_file
from bot.errors import (
    ConfigError,
    EngineFailed,
    LLMError,
)
from bot.llm.engines import CircuitBreaker, Engine, Engines
from bot.llm.fairness import FairSlots
from bot.llm.transport import ChatStream, EngineHTTP, Usage, engine_fault

log = logging.getLogger(__name__)

ChatMessages = Sequence[dict[str, str]]


@dataclass(slots=True)
class CallScope:
    """What the engine requests of one turn share, handed to every call explicitly.

    `affinity` names the conversation: every request of the turn goes to its engine (the
    prefix cache). Every stream that ends adds its usage to `usage`, so the dialogue manager
    learns an answer's token count without a second /tokenize round trip and without handlers
    doing any bookkeeping. `sent`, when given, is set once a streamed request has left (its
    bytes are written to the engine) or will not leave soon (it waits for a free slot, or
    failed): work of the caller's own can then start after the request instead of ahead of it.
    `share` names whose turn it is when requests wait for a slot (`bot.llm.fairness`).
    `model` is the served model (or LoRA adapter) the turn's profile names, for its generation
    requests; None: the client's own (counting tokens always uses the client's: one tokenizer).
    """

    affinity: str | None = None
    share: str | None = None
    model: str | None = None
    usage: Usage = field(default_factory=Usage)
    sent: asyncio.Event | None = None


class LLM(Protocol):
    """What the rest of Parley asks of an engine client (`LLMClient`; a scripted stand-in in
    unit tests). `stream` is an async context manager over the answer's text deltas: leaving
    it early aborts the engine's request."""

    def stream(
        self, messages: ChatMessages, *, scope: CallScope | None = None, max_tokens: int | None = None, **params: Any
    ) -> AbstractAsyncContextManager[AsyncIterable[str]]: ...

    async def choose(self, messages: ChatMessages, labels: Sequence[str], *, scope: CallScope | None = None) -> str: ...

    async def structured(
        self, messages: ChatMessages, schema: dict[str, Any], *, scope: CallScope | None = None, max_tokens: int = 512
    ) -> Any: ...

    async def tool_calls(
        self,
        messages: ChatMessages,
        tools: Sequence[dict[str, Any]],
        *,
        scope: CallScope | None = None,
        max_tokens: int = 512,
    ) -> list[tuple[str, Any]]: ...

    async def count_tokens(self, text: str, *, scope: CallScope | None = None) -> int: ...


class LLMClient:
    """An OpenAI-compatible client for one or more vLLM servers, owned by the composition root.

    With several engines, each conversation sticks to one (rendezvous hashing on its key),
    so that engine's prefix cache keeps serving its history; it moves to the next engine
    in its order only while its own is down. Engines behind a router instead get the key
    in a header (`PARLEY_LLM_AFFINITY_HEADER`) for the router's session affinity.

    Use as `async with LLMClient(settings) as llm:`; `aclose()` is safe to call twice.
    """

    def __init__(self, settings: LLMSettings, *, base_url: str | None = None) -> None:
        urls = [u.strip().rstrip("/") for u in (base_url or settings.base_url or "").split(",") if u.strip()]
        if not urls:
            raise ValueError("LLMClient needs a base URL (PARLEY_LLM_BASE_URL or a local engine)")
        self._settings = settings
        self._http = EngineHTTP(settings)
        self._pool = Engines(
            [
                Engine(url, CircuitBreaker(threshold=settings.breaker_threshold, cooldown=settings.breaker_cooldown))
                for url in urls
            ],
            probe=self._http.healthy,
        )
        self.engines = self._pool.engines
        self._model = settings.model
        # Counting tokens in process saves the engine (and this process) an HTTP request a turn.
        self._tokenizer = _load_tokenizer(settings.tokenizer) if settings.tokenizer else None
        self._slots = FairSlots(settings.max_concurrency)
        self.in_flight = 0  # generation requests open right now (metrics, tests)
        self.peak_in_flight = 0

    def waiting(self) -> int:
        """Requests waiting for one of the `max_concurrency` slots (metrics)."""
        return self._slots.waiting()

    @property
    def base_url(self) -> str:
        """The first engine's URL (the only one, in most deployments)."""
        return self.engines[0].base_url

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self, affinity: str | None) -> dict[str, str]:
        header = self._settings.affinity_header
        return {header: affinity} if header and affinity else {}

    # -- discovery and health ------------------------------------------------------------

    async def model(self) -> str:
        """The configured model, else the first one the engines list (asked once)."""
        if self._model is None:
            engine = (await self._pool.candidates(None))[0]
            body = await self._http.request(engine, "GET", f"{engine.base_url}/models")
            models = body.get("data") or []
            if not models:
                raise EngineFailed("the engine lists no models", url=engine.base_url)
            self._model = models[0]["id"]
            log.info("using model %s from %s", self._model, engine.base_url)
            if self._tokenizer is None and (root := models[0].get("root")):
                await self._find_tokenizer(Path(root))
        return self._model

    async def _find_tokenizer(self, root: Path) -> None:
        """The served model's tokenizer, when the engine's model folder is on this machine too
        (a local engine, or a shared volume): vLLM loads its tokenizer from that folder unless
        it was started with `--tokenizer`, in which case PARLEY_LLM_TOKENIZER names the file."""
        file = await asyncio.to_thread(tokenizer_file, root)
        if file is None:
            return
        try:
            self._tokenizer = await asyncio.to_thread(Tokenizer.from_file, str(file))
        except Exception as exc:  # a file nobody configured (the library raises bare Exceptions)
            log.warning("cannot load the tokenizer at %s (%s); counting tokens with the engine's /tokenize", file, exc)
            return
        log.info("counting tokens in process with %s", file)

    async def health(self) -> dict[str, bool]:
        """Each engine's /health, by base URL (for readiness)."""
        results = await asyncio.gather(*(self._http.healthy(e) for e in self.engines))
        return {engine.base_url: ok for engine, ok in zip(self.engines, results, strict=True)}

    def circuits(self) -> dict[str, str]:
        """Each engine's breaker state, by base URL (for metrics)."""
        return self._pool.circuits()

    async def metrics_text(self) -> str:
        """Every engine's Prometheus metrics, one after the other (sums stay right)."""
        texts = [
            (await self._http.send(e, "GET", f"{e.root_url}/metrics")).decode(errors="replace") for e in self.engines
        ]
        return "\n".join(texts)

    async def count_tokens(self, text: str, *, scope: CallScope | None = None) -> int:
        """Tokens in `text` by the served model's own tokenizer: in process when it is at hand
        (`PARLEY_LLM_TOKENIZER`, or found beside a local engine), else vLLM's /tokenize.
        Special tokens are not counted: the chat template places them, not the text."""
        if self._tokenizer is None:
            await self.model()  # discovering the model may find its tokenizer
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False))
        engine = (await self._pool.candidates(scope.affinity if scope else None))[0]
        body = await self._http.request(
            engine,
            "POST",
            f"{engine.root_url}/tokenize",
            json={"model": await self.model(), "prompt": text, "add_special_tokens": False},
        )
        return int(body["count"])

    # -- generation ----------------------------------------------------------------------

    @asynccontextmanager
    async def stream(
        self, messages: ChatMessages, *, scope: CallScope | None = None, max_tokens: int | None = None, **params: Any
    ) -> AsyncIterator[ChatStream]:
        """Stream a chat completion. Retries (connect errors, 429/503, another engine) happen
        only here, before the first token exists; once text may have been shown, a failure
        is final."""
        body = self._body(messages, max_tokens=max_tokens, stream=True, **params)
        body["stream_options"] = {"include_usage": True}
        scope = scope or CallScope()
        sent = scope.sent
        if sent is not None and self._slots.locked():
            sent.set()  # it queues behind other requests: nobody should wait for it
        async with self._slots.hold(scope.share), self._counted():
            deadline = asyncio.get_running_loop().time() + self._settings.total_timeout
            try:
                body["model"] = scope.model or await self.model()
                engine, response = await self._http.open_stream(
                    self._pool,
                    body,
                    deadline,
                    affinity=scope.affinity,
                    headers=self._headers(scope.affinity),
                    sent=sent,
                )
            finally:
                if sent is not None:
                    sent.set()
            chat = ChatStream(response, url=engine.base_url, deadline=deadline, settings=self._settings)
            try:
                yield chat
            except LLMError as exc:
                if engine_fault(exc):
                    engine.breaker.failure()
                raise
            finally:
                # A body read to its end gives the connection back to the pool; one that is
                # not closes it, and vLLM aborts the request.
                response.release()
                scope.usage.add(chat.usage)

    @asynccontextmanager
    async def _counted(self) -> AsyncIterator[None]:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    async def choose(self, messages: ChatMessages, labels: Sequence[str], *, scope: CallScope | None = None) -> str:
        """One of `labels`, chosen by the model under vLLM's structured-output constraint.

        vLLM ignores unknown request fields (and so silently ignored the retired
        `guided_choice`), so the answer is checked: an unconstrained answer is an error.
        """
        answer, url = await self._constrained(messages, {"choice": list(labels)}, 32, scope)
        if answer not in labels:
            raise EngineFailed("the engine did not constrain its answer to the labels", url=url, detail=answer[:100])
        return answer

    async def structured(
        self, messages: ChatMessages, schema: dict[str, Any], *, scope: CallScope | None = None, max_tokens: int = 512
    ) -> Any:
        """A JSON value matching `schema`, generated under vLLM's structured-output constraint.
        An answer that is not JSON (cut short by `max_tokens`, or an engine that ignored the
        constraint) is `EngineFailed`; checking it against the schema is the caller's part."""
        answer, url = await self._constrained(messages, {"json": schema}, max_tokens, scope)
        try:
            return json.loads(answer)
        except ValueError:
            raise EngineFailed("the engine's answer is not the JSON asked for", url=url, detail=answer[:100]) from None

    async def tool_calls(
        self,
        messages: ChatMessages,
        tools: Sequence[dict[str, Any]],
        *,
        scope: CallScope | None = None,
        max_tokens: int = 512,
    ) -> list[tuple[str, Any]]:
        """The calls the model makes through vLLM's native tool calling (`tools`, `tool_choice`
        auto: the engine's `--tool-call-parser` reads them out of the answer), as (name,
        arguments); arguments that are not JSON are returned as the text, for the caller to refuse."""
        message, _ = await self._complete(messages, max_tokens, scope, tools=list(tools), tool_choice="auto")
        calls = []
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            arguments: Any = function.get("arguments")
            if isinstance(arguments, str):
                with contextlib.suppress(ValueError):
                    arguments = json.loads(arguments)
            calls.append((str(function.get("name") or ""), arguments))
        return calls

    async def _constrained(
        self, messages: ChatMessages, constraint: dict[str, Any], max_tokens: int, scope: CallScope | None
    ) -> tuple[str, str]:
        """One non-streamed answer under `constraint` (vLLM's `structured_outputs`), and the engine's URL."""
        message, url = await self._complete(messages, max_tokens, scope, structured_outputs=constraint)
        return (message.get("content") or "").strip(), url

    async def _complete(
        self, messages: ChatMessages, max_tokens: int, scope: CallScope | None, **params: Any
    ) -> tuple[dict[str, Any], str]:
        """One non-streamed, greedy answer's message, and the engine's URL."""
        # ignore_eos (from extra_body, used to get fixed-length answers) would run past a
        # constrained answer's end, so it always may stop.
        body = self._body(messages, max_tokens=max_tokens, temperature=0.0, ignore_eos=False, **params)
        body["model"] = (scope.model if scope else None) or await self.model()
        affinity = scope.affinity if scope else None
        engine = (await self._pool.candidates(affinity))[0]
        async with self._slots.hold(scope.share if scope else None):
            result = await self._http.request(
                engine, "POST", f"{engine.base_url}/chat/completions", json=body, headers=self._headers(affinity)
            )
        return result["choices"][0]["message"], engine.base_url

    def _body(self, messages: ChatMessages, *, max_tokens: int | None, **params: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "messages": list(messages),
            "max_tokens": max_tokens or self._settings.max_tokens,
            "temperature": self._settings.temperature,
            **self._settings.extra_body,
            **params,
        }
        return body


def _load_tokenizer(file: Path) -> Tokenizer:
    """PARLEY_LLM_TOKENIZER's file (the setting has found it)."""
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # the library raises bare Exceptions for malformed files
        raise ConfigError("PARLEY_LLM_TOKENIZER", f"cannot load {file}: {exc}") from exc
