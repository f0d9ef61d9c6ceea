"""The LLM client's transport: one aiohttp session to the engines, the SSE framing of a
streamed chat completion, and every HTTP failure mapped to Parley's error tree (status and
Retry-After in hand). `bot.llm.client` builds requests on top of it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.config import LLMSettings
from bot.errors import EngineFailed, EngineOverloaded, EngineRejected, EngineTimeout, EngineUnavailable, LLMError
from bot.llm.engines import Engine, Engines

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


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
                raise map_transport_error(exc, self._url, self._settings) from exc
            except TimeoutError:
                raise EngineTimeout(
                    "answer exceeded the total timeout",
                    url=self._url,
                    phase="total",
                    timeout=self._settings.total_timeout,
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
                raise EngineFailed(
                    "malformed event in the stream", url=self._url, detail=data[:200].decode(errors="replace")
                ) from None
            if "error" in chunk:  # vLLM reports mid-stream failures as a data event
                raise EngineFailed("engine error mid-stream", url=self._url, detail=str(chunk["error"])[:500])
            if usage := chunk.get("usage"):
                self.usage = Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
            for choice in chunk.get("choices", ()):
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
                if text := (choice.get("delta") or {}).get("content"):
                    yield text


class EngineHTTP:
    """The HTTP side of one `LLMClient`: owns its session (closed by `aclose`)."""

    def __init__(self, settings: LLMSettings) -> None:
        self._settings = settings
        headers = {}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        tracing = aiohttp.TraceConfig()
        tracing.on_request_chunk_sent.append(_body_written)
        self._session = aiohttp.ClientSession(
            headers=headers,
            # `connect` covers the wait for a pooled connection too; a turn's own total
            # deadline (asyncio.timeout_at) bounds everything.
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=settings.total_timeout,
                sock_connect=settings.connect_timeout,
                sock_read=settings.read_timeout,
            ),
            # A connection the server closes as it idles out, reused at that moment, fails the
            # request ("Server disconnected"); vLLM closes them after 5 s, so they go sooner here.
            connector=aiohttp.TCPConnector(limit=settings.max_concurrency + 8, keepalive_timeout=settings.keepalive),
            trace_configs=[tracing],
            read_bufsize=2**18,  # the longest SSE line it will take (twice this)
        )

    async def aclose(self) -> None:
        await self._session.close()

    async def healthy(self, engine: Engine) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=self._settings.connect_timeout)
            async with self._session.get(f"{engine.root_url}/health", timeout=timeout) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def open_stream(
        self,
        pool: Engines,
        body: dict[str, Any],
        deadline: float,
        *,
        affinity: str | None,
        headers: Mapping[str, str],
        sent: asyncio.Event | None,
    ) -> tuple[Engine, aiohttp.ClientResponse]:
        """POST a streamed chat completion to the best engine of `pool` for this request; retries
        (connect errors, 429/503, another engine) happen only here, before the first token."""
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **headers}
        error: LLMError
        for attempt in range(self._settings.retries + 1):
            candidates = await pool.candidates(affinity, rotate=attempt == 0)
            engine = candidates[attempt % len(candidates)]
            try:
                async with asyncio.timeout_at(deadline):
                    response = await self._session.post(
                        f"{engine.base_url}/chat/completions", data=payload, headers=headers, trace_request_ctx=sent
                    )
                    if response.status >= 400:
                        try:
                            raise map_status(response.status, response.headers, await response.read(), engine.base_url)
                        finally:
                            response.release()
                    engine.breaker.success()
                    return engine, response
            # aiohttp's connect and read timeouts are TimeoutErrors too: they must be caught first.
            except aiohttp.ServerDisconnectedError as exc:
                # The engine accepted the connection, then closed it without an answer: a
                # keep-alive it timed out as we reused it, or a front end that stalled past its
                # idle timer (a burst of these came at once on the busy CPU engine). It is up,
                # so this is not held against it: the retry takes a fresh connection, and if
                # the engine really is gone, that connect is refused and counts.
                error = map_transport_error(exc, engine.base_url, self._settings)
                if attempt >= self._settings.retries:
                    raise error from exc
                log.warning("engine %s: %s; retry %d now", engine.base_url, error, attempt + 1)
                continue
            except aiohttp.ClientError as exc:
                error = map_transport_error(exc, engine.base_url, self._settings)
            except TimeoutError:
                engine.breaker.failure()
                raise EngineTimeout(
                    "no answer within the total timeout",
                    url=engine.base_url,
                    phase="total",
                    timeout=self._settings.total_timeout,
                ) from None
            except LLMError as exc:
                error = exc
            if engine_fault(error):
                engine.breaker.failure()
            if not error.retryable or attempt >= self._settings.retries:
                raise error
            if sent is not None:
                sent.set()  # a retry waits first: nobody should wait for it
            delay = min(getattr(error, "retry_after", None) or 0.5 * (attempt + 1), 5.0)
            log.warning("engine %s: %s; retry %d in %.1fs", engine.base_url, error, attempt + 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt raises")

    async def send(self, engine: Engine, method: str, url: str, **kwargs: Any) -> bytes:
        """A request that is not a stream: its whole body, or the mapped failure."""
        try:
            async with self._session.request(method, url, **kwargs) as response:
                body = await response.read()
        except aiohttp.ClientError as exc:
            error = map_transport_error(exc, engine.base_url, self._settings)
            if engine_fault(error):
                engine.breaker.failure()
            raise error from exc
        if response.status >= 400:
            raise map_status(response.status, response.headers, body, engine.base_url)
        return body

    async def request(self, engine: Engine, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        body = await self.send(engine, method, url, **kwargs)
        try:
            return json.loads(body)
        except ValueError:
            raise EngineFailed(
                "the engine answered with something other than JSON",
                url=engine.base_url,
                detail=body[:200].decode(errors="replace"),
            ) from None


def engine_fault(error: LLMError) -> bool:
    """Failures that say the engine itself is down or broken (not busy, not our request)."""
    return isinstance(error, (EngineUnavailable, EngineTimeout, EngineFailed))


def map_transport_error(exc: aiohttp.ClientError, url: str, settings: LLMSettings) -> LLMError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return EngineTimeout("engine connect timed out", url=url, phase="connect", timeout=settings.connect_timeout)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return EngineTimeout("engine read timed out", url=url, phase="read", timeout=settings.read_timeout)
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        # refused, reset, closed mid-answer, or a body cut short
        return EngineUnavailable(f"cannot reach the engine: {exc!r}", url=url)
    return EngineFailed(f"transport error: {exc!r}", url=url)


def map_status(status: int, headers: Mapping[str, str], body: bytes, url: str) -> LLMError:
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
