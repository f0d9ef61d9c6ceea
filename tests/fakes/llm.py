"""A scripted `LLMClient` for unit tests of the dialogue core: no engine, no HTTP.

It speaks the client's public surface (`stream`, `choose`, `structured`, `tool_calls`,
`count_tokens`, `model`, `health`, `circuits`, `in_flight`) and honours the caller's
`CallScope` as the real client does: its `affinity` is recorded with each request, its
`sent` event is set as a stream request "leaves", and a stream adds its usage to its
`usage` as it closes, so speculation and token metering behave as with the real client.
Usage arrives only with a stream's end, as vLLM sends it in the last event: a stream closed
early reports none.

Every stream request is recorded as a `Call` with how it ended: read to its end, failed, or
closed early (`aborted`: the real client's contract is that closing a stream aborts the request
in vLLM, so a test can check that a dropped answer stopped the engine).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from bot.errors import EngineFailed, LLMError
from bot.llm.client import CallScope, ChatMessages, Usage

URL = "fake://engine/v1"


@dataclass
class Answer:
    """One scripted completion, streamed chunk by chunk.

    `error` is raised after `fail_after` chunks; 0 raises it as the request opens (a refused
    connection, a 400), before any chunk exists. After `hold_after` chunks the stream waits
    for `FakeLLM.release` (and sets `FakeLLM.held`): an engine still generating, for tests that
    cancel or drop an answer mid-way. `delay` seconds pass before each chunk."""

    chunks: Sequence[str] = ("Scripted answer.",)
    error: LLMError | None = None
    fail_after: int = 0
    hold_after: int | None = None
    delay: float = 0.0
    completion_tokens: int | None = None  # as the engine reports it; default: one per chunk


Script = Sequence[Answer | Sequence[str] | str] | Callable[[list[dict[str, str]]], Answer | Sequence[str] | str]


@dataclass
class Call:
    """One stream request as the engine would have seen it, and how it ended."""

    messages: list[dict[str, str]]
    params: dict[str, Any]
    affinity: str | None
    prompt_tokens: int
    chunks_sent: int = 0
    finished: bool = False  # read to its end (its usage was reported)
    failed: LLMError | None = None
    closed: bool = False  # the caller left the stream

    @property
    def aborted(self) -> bool:
        """Closed before its end without an engine error: the caller dropped it."""
        return self.closed and not self.finished and self.failed is None

    @property
    def system(self) -> str:
        return self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else ""

    @property
    def user(self) -> str:
        """The newest user message: the turn as the prompt carries it."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")


@dataclass
class Choice:
    messages: list[dict[str, str]]
    labels: tuple[str, ...]
    affinity: str | None


@dataclass
class Structured:
    messages: list[dict[str, str]]
    schema: dict[str, Any]
    affinity: str | None


def count(text: str) -> int:
    """The fake's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


class FakeStream:
    """What `FakeLLM.stream` yields: the deltas of one answer; `usage` is filled at its end."""

    def __init__(self, llm: FakeLLM, call: Call, answer: Answer) -> None:
        self._llm = llm
        self._call = call
        self._answer = answer
        self.usage = Usage()
        self.finish_reason: str | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        answer, call = self._answer, self._call
        for n in range(len(answer.chunks) + 1):
            if answer.error is not None and n == answer.fail_after:
                call.failed = answer.error
                raise answer.error
            if n == answer.hold_after:
                self._llm.held.set()
                await self._llm.release.wait()
            if n == len(answer.chunks):
                break
            if answer.delay:
                await asyncio.sleep(answer.delay)
            call.chunks_sent += 1
            yield answer.chunks[n]
        tokens = len(answer.chunks) if answer.completion_tokens is None else answer.completion_tokens
        self.usage = Usage(call.prompt_tokens, tokens)
        self.finish_reason = "stop"
        call.finished = True


class FakeLLM:
    """Answers stream requests from `answers`: a list taken in order (an `Answer`, a list of
    chunks, or one string), or a function of the request's messages; unset, every request
    gets `Answer()`. `label` answers `choose`: a label, a function of (messages, labels), or
    None for the first label; a label outside the labels fails as the real client does."""

    def __init__(
        self,
        answers: Script | None = None,
        *,
        label: str | Callable[[list[dict[str, str]], tuple[str, ...]], str] | None = None,
        decisions: Sequence[Any] = (),
    ) -> None:
        self._script = answers
        self._next = 0
        self._label = label
        self.requests: list[Call] = []
        self.choices: list[Choice] = []
        self._decisions = list(decisions)  # `structured` answers in order: a value, an error, or f(messages, schema)
        self.structured_calls: list[Structured] = []
        self.tool_requests: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []  # (messages, tools)
        self.counted: list[str] = []
        self.held = asyncio.Event()  # a stream has reached its `hold_after`
        self.release = asyncio.Event()  # lets held streams go on
        self.in_flight = 0
        self.peak_in_flight = 0

    # -- the LLMClient surface ----------------------------------------------------------------

    @asynccontextmanager
    async def stream(
        self, messages: ChatMessages, *, scope: CallScope | None = None, max_tokens: int | None = None, **params: Any
    ) -> AsyncIterator[FakeStream]:
        scope = scope or CallScope()
        call = Call(
            [dict(m) for m in messages],
            {"max_tokens": max_tokens, **params},
            scope.affinity,
            prompt_tokens=sum(count(m["content"]) for m in messages),
        )
        self.requests.append(call)
        answer = self._answer(call.messages)
        chat = FakeStream(self, call, answer)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if scope.sent is not None:
                scope.sent.set()  # the request has left (the real client: its body is written)
            if answer.error is not None and answer.fail_after == 0:
                call.failed = answer.error
                raise answer.error
            yield chat
        finally:
            call.closed = True
            self.in_flight -= 1
            scope.usage.add(chat.usage)

    async def choose(self, messages: ChatMessages, labels: Sequence[str], *, scope: CallScope | None = None) -> str:
        call = Choice([dict(m) for m in messages], tuple(labels), scope.affinity if scope else None)
        self.choices.append(call)
        if self._label is None:
            return call.labels[0]
        label = self._label(call.messages, call.labels) if callable(self._label) else self._label
        if label not in call.labels:
            raise EngineFailed("the engine did not constrain its answer to the labels", url=URL, detail=label)
        return label

    async def structured(
        self, messages: ChatMessages, schema: dict[str, Any], *, scope: CallScope | None = None, max_tokens: int = 512
    ) -> Any:
        call = Structured([dict(m) for m in messages], schema, scope.affinity if scope else None)
        self.structured_calls.append(call)
        if not self._decisions:
            raise EngineFailed("no structured answer scripted", url=URL, detail="")
        decision = self._decisions.pop(0)
        value = decision(call.messages, schema) if callable(decision) else decision
        if isinstance(value, BaseException):
            raise value
        return value

    async def tool_calls(
        self,
        messages: ChatMessages,
        tools: Sequence[dict[str, Any]],
        *,
        scope: CallScope | None = None,
        max_tokens: int = 512,
    ) -> list[tuple[str, Any]]:
        """Native tool calling: the next scripted decision (`{"calls": [...]}`) as (name, arguments)."""
        self.tool_requests.append(([dict(m) for m in messages], list(tools)))
        value = await self.structured(messages, {}, scope=scope, max_tokens=max_tokens)
        return [(c["action"], c["arguments"]) for c in value["calls"]]

    async def count_tokens(self, text: str, *, scope: CallScope | None = None) -> int:
        self.counted.append(text)
        return count(text)

    async def model(self) -> str:
        return "fake"

    async def health(self) -> dict[str, bool]:
        return {URL: True}

    def circuits(self) -> dict[str, str]:
        return {URL: "closed"}

    async def aclose(self) -> None:
        self.release.set()  # nothing stays held after the client is gone

    async def __aenter__(self) -> FakeLLM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the script ---------------------------------------------------------------------------

    def _answer(self, messages: list[dict[str, str]]) -> Answer:
        if self._script is None:
            return Answer()
        if callable(self._script):
            scripted = self._script(messages)
        else:
            if self._next >= len(self._script):
                raise AssertionError(
                    f"FakeLLM: request {self._next + 1} has no scripted answer ({len(self._script)} scripted)"
                )
            scripted = self._script[self._next]
            self._next += 1
        if isinstance(scripted, Answer):
            return scripted
        return Answer((scripted,) if isinstance(scripted, str) else tuple(scripted))
