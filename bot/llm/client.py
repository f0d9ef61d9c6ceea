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
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextvars import ContextVar
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from tokenizers import Tokenizer

from bot.config import LLMSettings, tokenizer_file
from bot.errors import (
    ConfigError,
    EngineFailed,
    EngineOverloaded,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    LLMError,
)

log = logging.getLogger(__name__)

ChatMessages = Sequence[dict[str, str]]


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


# Every stream that ends adds its usage to the meter of the context it ran in. The dialogue
# manager sets a fresh meter per turn, so it learns an answer's token count without a
# second /tokenize round trip and without handlers doing any bookkeeping.
usage_meter: ContextVar[Usage | None] = ContextVar("parley_usage_meter", default=None)
# Set by a caller that wants to know when its streamed request has left (its bytes are
# written to the engine), or will not leave soon (it waits for a free slot, or failed):
# work of the caller's own can then start after the request instead of ahead of it.
request_sent: ContextVar[asyncio.Event | None] = ContextVar("parley_request_sent", default=None)


async def _body_written(session: object, trace: Any, params: object) -> None:
    """aiohttp's trace hook, called as a request's body goes out (the body is one chunk)."""
    if isinstance(trace.trace_request_ctx, asyncio.Event):
        trace.trace_request_ctx.set()


class ChatStream:
    """Text deltas of one streamed chat completion; `usage` is filled when it ends."""

    def __init__(self, response: aiohttp.ClientResponse, *, url: str, deadline: float, settings: LLMSettings) -> None:
        self._response = response
        self._url = url
        self._deadline = deadline
        self._settings = settings
        self.usage = Usage()
        self.finish_reason: str | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        content = self._response.content
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    line = await content.readline()
            # aiohttp's read timeout is a TimeoutError too: it must be caught first.
            except aiohttp.ClientError as exc:
                raise _map_transport_error(exc, self._url, self._settings) from exc
            except TimeoutError:
                raise EngineTimeout(
                    "answer exceeded the total timeout", url=self._url, phase="total", timeout=self._settings.total_timeout
                ) from None
            except ValueError as exc:  # a line beyond the read buffer: no SSE event is that long
                raise EngineFailed("malformed event stream", url=self._url, detail=str(exc)) from None
            if not line:
                return  # the end of the body
            if not line.startswith(b"data:"):
                continue  # SSE comments and blank separators
            data = line[5:].strip()
            if data == b"[DONE]":
                continue  # the body ends right after it; read to its end, the connection is reused
            try:
                chunk = json.loads(data)
            except ValueError:
                raise EngineFailed("malformed event in the stream", url=self._url, detail=data[:200].decode(errors="replace")) from None
            if "error" in chunk:  # vLLM reports mid-stream failures as a data event
                raise EngineFailed("engine error mid-stream", url=self._url, detail=str(chunk["error"])[:500])
            if usage := chunk.get("usage"):
                self.usage = Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
            for choice in chunk.get("choices", ()):
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
                if text := (choice.get("delta") or {}).get("content"):
                    yield text


class CircuitBreaker:
    """Keeps requests off an engine that is down, and lets one probe find out when it is back.

    Closed: requests flow. After `threshold` consecutive failures it opens: the engine is
    skipped (or, with no other engine, the turn fails at once) for `cooldown` seconds.
    Then it is half-open: the next request first probes the engine's /health; healthy
    closes the breaker, anything else opens it for another cooldown.
    """

    def __init__(self, *, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self._cooldown else "open"

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def failure(self) -> None:
        self._failures += 1
        if self._failures >= self._threshold or self._opened_at is not None:
            self._opened_at = self._clock()


@dataclass(slots=True)
class Engine:
    base_url: str  # ends in /v1
    breaker: CircuitBreaker

    @property
    def root_url(self) -> str:
        # /tokenize, /health and /metrics live at the server root, beside /v1.
        return self.base_url.removesuffix("/v1")


# Which conversation the current request belongs to. The dialogue manager sets it per
# turn; every request of that turn then goes to the conversation's engine.
affinity_key: ContextVar[str | None] = ContextVar("parley_affinity_key", default=None)


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
        self.engines = [
            Engine(url, CircuitBreaker(threshold=settings.breaker_threshold, cooldown=settings.breaker_cooldown))
            for url in urls
        ]
        self._settings = settings
        self._model = settings.model
        # Counting tokens in process saves the engine (and this process) an HTTP request a turn.
        self._tokenizer = _load_tokenizer(settings.tokenizer) if settings.tokenizer else None
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self.in_flight = 0  # generation requests open right now (metrics, tests)
        self.peak_in_flight = 0
        self._turn = 0  # round-robin position for requests without affinity
        headers = {}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        tracing = aiohttp.TraceConfig()
        tracing.on_request_chunk_sent.append(_body_written)
        self._http = aiohttp.ClientSession(
            headers=headers,
            # `connect` covers the wait for a pooled connection too; a turn's own total
            # deadline (asyncio.timeout_at) bounds everything.
            timeout=aiohttp.ClientTimeout(
                total=None, connect=settings.total_timeout, sock_connect=settings.connect_timeout,
                sock_read=settings.read_timeout,
            ),
            # A connection the server closes as it idles out, reused at that moment, fails the
            # request ("Server disconnected"); vLLM closes them after 5 s, so they go sooner here.
            connector=aiohttp.TCPConnector(limit=settings.max_concurrency + 8, keepalive_timeout=settings.keepalive),
            trace_configs=[tracing],
            read_bufsize=2**18,  # the longest SSE line it will take (twice this)
        )

    @property
    def base_url(self) -> str:
        """The first engine's URL (the only one, in most deployments)."""
        return self.engines[0].base_url

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.close()

    # -- choosing an engine --------------------------------------------------------------

    def _order(self, affinity: str | None, *, rotate: bool = False) -> list[Engine]:
        """Engines in order of preference. Without affinity: the same order for side
        requests (token counts, choices), the next one in turn for each generation."""
        if len(self.engines) == 1:
            return list(self.engines)
        if affinity is None:
            if rotate:
                self._turn = (self._turn + 1) % len(self.engines)
            return self.engines[self._turn :] + self.engines[: self._turn]

        # Rendezvous hashing: adding or removing an engine moves only the conversations
        # that must move, and each conversation has a stable order of fallbacks.
        def weight(engine: Engine) -> bytes:
            return hashlib.blake2b(f"{affinity}|{engine.base_url}".encode(), digest_size=8).digest()

        return sorted(self.engines, key=weight, reverse=True)

    async def _candidates(self, affinity: str | None, *, rotate: bool = False) -> list[Engine]:
        """The engines to try, best first, without those whose breaker is open."""
        usable = []
        for engine in self._order(affinity, rotate=rotate):
            state = engine.breaker.state
            if state == "half_open":
                if await self._healthy(engine):
                    log.info("engine %s is back; circuit closed", engine.base_url)
                    engine.breaker.success()
                    state = "closed"
                else:
                    engine.breaker.failure()
            if state == "closed":
                usable.append(engine)
        if not usable:
            raise EngineUnavailable("every engine is down (circuit open)", url=self.base_url)
        return usable

    def _headers(self, affinity: str | None) -> dict[str, str]:
        header = self._settings.affinity_header
        return {header: affinity} if header and affinity else {}

    # -- discovery and health ------------------------------------------------------------

    async def model(self) -> str:
        """The configured model, else the first one the engines list (asked once)."""
        if self._model is None:
            engine = (await self._candidates(None))[0]
            body = await self._request(engine, "GET", f"{engine.base_url}/models")
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

    async def _healthy(self, engine: Engine) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=self._settings.connect_timeout)
            async with self._http.get(f"{engine.root_url}/health", timeout=timeout) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def health(self) -> dict[str, bool]:
        """Each engine's /health, by base URL (for readiness)."""
        results = await asyncio.gather(*(self._healthy(e) for e in self.engines))
        return {engine.base_url: ok for engine, ok in zip(self.engines, results, strict=True)}

    def circuits(self) -> dict[str, str]:
        """Each engine's breaker state, by base URL (for metrics)."""
        return {engine.base_url: engine.breaker.state for engine in self.engines}

    async def metrics_text(self) -> str:
        """Every engine's Prometheus metrics, one after the other (sums stay right)."""
        texts = [(await self._send(e, "GET", f"{e.root_url}/metrics")).decode(errors="replace") for e in self.engines]
        return "\n".join(texts)

    async def count_tokens(self, text: str) -> int:
        """Tokens in `text` by the served model's own tokenizer: in process when it is at hand
        (`PARLEY_LLM_TOKENIZER`, or found beside a local engine), else vLLM's /tokenize.
        Special tokens are not counted: the chat template places them, not the text."""
        if self._tokenizer is None:
            await self.model()  # discovering the model may find its tokenizer
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False))
        engine = (await self._candidates(affinity_key.get()))[0]
        body = await self._request(
            engine, "POST", f"{engine.root_url}/tokenize",
            json={"model": await self.model(), "prompt": text, "add_special_tokens": False},
        )
        return int(body["count"])

    # -- generation ----------------------------------------------------------------------

    @asynccontextmanager
    async def stream(self, messages: ChatMessages, *, max_tokens: int | None = None, **params: Any) -> AsyncIterator[ChatStream]:
        """Stream a chat completion. Retries (connect errors, 429/503, another engine) happen
        only here, before the first token exists; once text may have been shown, a failure
        is final."""
        body = self._body(messages, max_tokens=max_tokens, stream=True, **params)
        body["stream_options"] = {"include_usage": True}
        sent = request_sent.get()
        if sent is not None and self._slots.locked():
            sent.set()  # it queues behind other requests: nobody should wait for it
        async with self._slots, self._counted():
            deadline = asyncio.get_running_loop().time() + self._settings.total_timeout
            try:
                engine, response = await self._open_stream(body, deadline, affinity_key.get(), sent)
            finally:
                if sent is not None:
                    sent.set()
            chat = ChatStream(response, url=engine.base_url, deadline=deadline, settings=self._settings)
            try:
                yield chat
            except LLMError as exc:
                if _engine_fault(exc):
                    engine.breaker.failure()
                raise
            finally:
                # A body read to its end gives the connection back to the pool; one that is
                # not closes it, and vLLM aborts the request.
                response.release()
                if (meter := usage_meter.get()) is not None:
                    meter.add(chat.usage)

    @asynccontextmanager
    async def _counted(self) -> AsyncIterator[None]:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    async def choose(self, messages: ChatMessages, labels: Sequence[str]) -> str:
        """One of `labels`, chosen by the model under vLLM's structured-output constraint.

        vLLM ignores unknown request fields (and so silently ignored the retired
        `guided_choice`), so the answer is checked: an unconstrained answer is an error.
        """
        # ignore_eos (from extra_body, used to get fixed-length answers) would run past
        # the label's end, so a choice always may stop.
        body = self._body(
            messages, max_tokens=32, temperature=0.0, ignore_eos=False, structured_outputs={"choice": list(labels)}
        )
        body["model"] = await self.model()
        affinity = affinity_key.get()
        engine = (await self._candidates(affinity))[0]
        async with self._slots:
            result = await self._request(
                engine, "POST", f"{engine.base_url}/chat/completions", json=body, headers=self._headers(affinity)
            )
        answer = (result["choices"][0]["message"].get("content") or "").strip()
        if answer not in labels:
            raise EngineFailed("the engine did not constrain its answer to the labels", url=engine.base_url, detail=answer[:100])
        return answer

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

    async def _open_stream(
        self, body: dict[str, Any], deadline: float, affinity: str | None, sent: asyncio.Event | None = None
    ) -> tuple[Engine, aiohttp.ClientResponse]:
        body["model"] = await self.model()
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **self._headers(affinity)}
        for attempt in range(self._settings.retries + 1):
            candidates = await self._candidates(affinity, rotate=attempt == 0)
            engine = candidates[attempt % len(candidates)]
            try:
                async with asyncio.timeout_at(deadline):
                    response = await self._http.post(
                        f"{engine.base_url}/chat/completions", data=payload, headers=headers, trace_request_ctx=sent
                    )
                    if response.status >= 400:
                        try:
                            raise _map_status(response.status, response.headers, await response.read(), engine.base_url)
                        finally:
                            response.release()
                    engine.breaker.success()
                    return engine, response
            # aiohttp's connect and read timeouts are TimeoutErrors too: they must be caught first.
            except aiohttp.ClientError as exc:
                error: LLMError = _map_transport_error(exc, engine.base_url, self._settings)
            except TimeoutError:
                engine.breaker.failure()
                raise EngineTimeout(
                    "no answer within the total timeout", url=engine.base_url, phase="total", timeout=self._settings.total_timeout
                ) from None
            except LLMError as exc:
                error = exc
            if _engine_fault(error):
                engine.breaker.failure()
            if not error.retryable or attempt >= self._settings.retries:
                raise error
            if sent is not None:
                sent.set()  # a retry waits first: nobody should wait for it
            delay = min(getattr(error, "retry_after", None) or 0.5 * (attempt + 1), 5.0)
            log.warning("engine %s: %s; retry %d in %.1fs", engine.base_url, error, attempt + 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt raises")

    async def _send(self, engine: Engine, method: str, url: str, **kwargs: Any) -> bytes:
        """A request that is not a stream: its whole body, or the mapped failure."""
        try:
            async with self._http.request(method, url, **kwargs) as response:
                body = await response.read()
        except aiohttp.ClientError as exc:
            error = _map_transport_error(exc, engine.base_url, self._settings)
            if _engine_fault(error):
                engine.breaker.failure()
            raise error from exc
        if response.status >= 400:
            raise _map_status(response.status, response.headers, body, engine.base_url)
        return body

    async def _request(self, engine: Engine, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        body = await self._send(engine, method, url, **kwargs)
        try:
            return json.loads(body)  # type: ignore[no-any-return]
        except ValueError:
            raise EngineFailed("the engine answered with something other than JSON", url=engine.base_url,
                               detail=body[:200].decode(errors="replace")) from None


def _load_tokenizer(file: Path) -> Tokenizer:
    """PARLEY_LLM_TOKENIZER's file (the setting has found it)."""
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # the library raises bare Exceptions for malformed files
        raise ConfigError("PARLEY_LLM_TOKENIZER", f"cannot load {file}: {exc}") from exc


def _engine_fault(error: LLMError) -> bool:
    """Failures that say the engine itself is down or broken (not busy, not our request)."""
    return isinstance(error, (EngineUnavailable, EngineTimeout, EngineFailed))


def _map_transport_error(exc: aiohttp.ClientError, url: str, settings: LLMSettings) -> LLMError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return EngineTimeout("engine connect timed out", url=url, phase="connect", timeout=settings.connect_timeout)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return EngineTimeout("engine read timed out", url=url, phase="read", timeout=settings.read_timeout)
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        # refused, reset, closed mid-answer, or a body cut short
        return EngineUnavailable(f"cannot reach the engine: {exc!r}", url=url)
    return EngineFailed(f"transport error: {exc!r}", url=url)


def _map_status(status: int, headers: Mapping[str, str], body: bytes, url: str) -> LLMError:
    detail = body[:500].decode(errors="replace")
    if status in (429, 503):
        retry_after = headers.get("Retry-After")
        try:
            seconds = float(retry_after) if retry_after else None
        except ValueError:
            seconds = None
        return EngineOverloaded(f"engine overloaded ({status})", url=url, status=status, retry_after=seconds)
    if 400 <= status < 500:
        return EngineRejected(f"engine rejected the request ({status})", url=url, status=status, detail=detail)
    return EngineFailed(f"engine failed ({status})", url=url, status=status, detail=detail)
