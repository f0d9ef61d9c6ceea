"""The LLM client: the only code that talks to vLLM.

Why httpx and not the `openai` package: Parley needs more of vLLM than the OpenAI
surface (`/tokenize`, `/health`, `/metrics`, the `structured_outputs` and
`ignore_eos` extensions), wants its own connect/read/total timeouts and retry
rules rather than the SDK's hidden retries, and must map every failure to
Parley's error tree with the status and Retry-After in hand. One `httpx.AsyncClient`
serves all of that over one connection pool; the SSE framing of a chat stream
is a few lines.

Closing a stream (leaving `async with client.stream(...)`, or the consumer
stopping early) closes the HTTP response, and vLLM aborts the request and frees
its KV cache.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from bot.config import LLMSettings
from bot.errors import (
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


class ChatStream:
    """Text deltas of one streamed chat completion; `usage` is filled when it ends."""

    def __init__(self, response: httpx.Response, *, url: str, deadline: float, total: float) -> None:
        self._response = response
        self._url = url
        self._deadline = deadline
        self._total = total
        self.usage = Usage()
        self.finish_reason: str | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        lines = self._response.aiter_lines()
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    line = await anext(lines)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise EngineTimeout(
                    "answer exceeded the total timeout", url=self._url, phase="total", timeout=self._total
                ) from None
            except httpx.HTTPError as exc:
                raise _map_transport_error(exc, self._url) from exc
            if not line.startswith("data:"):
                continue  # SSE comments and blank separators
            data = line[5:].strip()
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:  # vLLM reports mid-stream failures as a data event
                raise EngineFailed("engine error mid-stream", url=self._url, detail=str(chunk["error"])[:500])
            if usage := chunk.get("usage"):
                self.usage = Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
            for choice in chunk.get("choices", ()):
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
                if text := (choice.get("delta") or {}).get("content"):
                    yield text


class LLMClient:
    """An OpenAI-compatible client for one vLLM server, owned by the composition root.

    Use as `async with LLMClient(settings) as llm:`; `aclose()` is safe to call twice.
    """

    def __init__(self, settings: LLMSettings, *, base_url: str | None = None) -> None:
        url = base_url or settings.base_url
        if not url:
            raise ValueError("LLMClient needs a base URL (PARLEY_LLM_BASE_URL or a local engine)")
        self.base_url = url.rstrip("/")
        # /tokenize, /health and /metrics live at the server root, beside /v1.
        self.root_url = self.base_url.removesuffix("/v1")
        self._settings = settings
        self._model = settings.model
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        headers = {}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.read_timeout,
                write=settings.read_timeout,
                pool=settings.total_timeout,
            ),
            limits=httpx.Limits(max_connections=settings.max_concurrency + 8, max_keepalive_connections=64),
        )

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- discovery and health ------------------------------------------------------------

    async def model(self) -> str:
        """The configured model, else the first one the engine lists (asked once)."""
        if self._model is None:
            body = await self._request("GET", f"{self.base_url}/models")
            models = body.get("data") or []
            if not models:
                raise EngineFailed("the engine lists no models", url=self.base_url)
            self._model = models[0]["id"]
            log.info("using model %s from %s", self._model, self.base_url)
        return self._model

    async def health(self) -> bool:
        try:
            response = await self._http.get(f"{self.root_url}/health", timeout=self._settings.connect_timeout)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def metrics_text(self) -> str:
        """The engine's Prometheus metrics, for `parley bench` and readiness."""
        response = await self._send("GET", f"{self.root_url}/metrics")
        return response.text

    async def count_tokens(self, text: str) -> int:
        """Tokens in `text` by the served model's own tokenizer (vLLM's /tokenize)."""
        body = await self._request("POST", f"{self.root_url}/tokenize", json={"model": await self.model(), "prompt": text})
        return int(body["count"])

    # -- generation ----------------------------------------------------------------------

    @asynccontextmanager
    async def stream(self, messages: ChatMessages, *, max_tokens: int | None = None, **params: Any) -> AsyncIterator[ChatStream]:
        """Stream a chat completion. Retries (connect errors, 429/503) happen only here,
        before the first token exists; once text may have been shown, a failure is final."""
        body = self._body(messages, max_tokens=max_tokens, stream=True, **params)
        body["stream_options"] = {"include_usage": True}
        async with self._slots:
            deadline = asyncio.get_running_loop().time() + self._settings.total_timeout
            response = await self._open_stream(body, deadline)
            chat = ChatStream(response, url=self.base_url, deadline=deadline, total=self._settings.total_timeout)
            try:
                yield chat
            finally:
                await response.aclose()
                if (meter := usage_meter.get()) is not None:
                    meter.add(chat.usage)

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
        async with self._slots:
            result = await self._request("POST", f"{self.base_url}/chat/completions", json=body)
        answer = (result["choices"][0]["message"].get("content") or "").strip()
        if answer not in labels:
            raise EngineFailed("the engine did not constrain its answer to the labels", url=self.base_url, detail=answer[:100])
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

    async def _open_stream(self, body: dict[str, Any], deadline: float) -> httpx.Response:
        body["model"] = await self.model()
        attempt = 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    request = self._http.build_request("POST", f"{self.base_url}/chat/completions", json=body)
                    response = await self._http.send(request, stream=True)
                    if response.status_code >= 400:
                        await response.aread()
                        await response.aclose()
                        raise _map_status(response, self.base_url)
                    return response
            except TimeoutError:
                raise EngineTimeout(
                    "no answer within the total timeout", url=self.base_url, phase="total", timeout=self._settings.total_timeout
                ) from None
            except httpx.HTTPError as exc:
                error: LLMError = _map_transport_error(exc, self.base_url)
            except LLMError as exc:
                error = exc
            if not error.retryable or attempt >= self._settings.retries:
                raise error
            attempt += 1
            delay = min(getattr(error, "retry_after", None) or 0.5 * attempt, 5.0)
            log.warning("engine %s: %s; retry %d in %.1fs", self.base_url, error, attempt, delay)
            await asyncio.sleep(delay)

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise _map_transport_error(exc, self.base_url) from exc
        if response.status_code >= 400:
            raise _map_status(response, self.base_url)
        return response

    async def _request(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        return (await self._send(method, url, **kwargs)).json()


def _map_transport_error(exc: httpx.HTTPError, url: str) -> LLMError:
    if isinstance(exc, httpx.TimeoutException):
        phase = "connect" if isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)) else "read"
        timeout = (exc.request.extensions.get("timeout") or {}).get(phase, 0.0) if _has_request(exc) else 0.0
        return EngineTimeout(f"engine {phase} timed out", url=url, phase=phase, timeout=timeout or 0.0)
    if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return EngineUnavailable(f"cannot reach the engine: {exc!r}", url=url)
    return EngineFailed(f"transport error: {exc!r}", url=url)


def _has_request(exc: httpx.HTTPError) -> bool:
    try:
        exc.request  # noqa: B018 - raises RuntimeError when the error has no request
    except RuntimeError:
        return False
    return True


def _map_status(response: httpx.Response, url: str) -> LLMError:
    status = response.status_code
    detail = response.text[:500]
    if status in (429, 503):
        retry_after = response.headers.get("Retry-After")
        try:
            seconds = float(retry_after) if retry_after else None
        except ValueError:
            seconds = None
        return EngineOverloaded(f"engine overloaded ({status})", url=url, status=status, retry_after=seconds)
    if 400 <= status < 500:
        return EngineRejected(f"engine rejected the request ({status})", url=url, status=status, detail=detail)
    return EngineFailed(f"engine failed ({status})", url=url, status=status, detail=detail)
