"""The output guard: what of a handler's stream the user may see, and when.

`moderated` checks each piece of an answer before release (personal data, profanity), holding
back a tail that may be personal data still being written (`boundary`); `guarded` turns an
engine failure into a notice for the user and keeps the answer's timings (`Answer`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from bot import messages
from bot.errors import LLMError
from bot.moderation.moderator import Moderator
from bot.tenants import ModerationConfig
from bot.turns import Turn

OUTPUT_HOLD = 64  # characters of an answer held back at most while personal data may be in progress
_RUN_CHARS = frozenset("_.+-@()")  # besides letters and digits, what a phone, card, IBAN or e-mail holds
_SEPARATORS = " .-"  # between the chunks of a number being written


def boundary(text: str) -> int:
    """How much of the pending answer may be released now. Everything is, except a tail
    that may be personal data still being written (chunks with digits, `+` or `@`, which a
    phone, card, IBAN or e-mail address has, and the word being written, which may yet be
    an address's local part), held until it ends or `OUTPUT_HOLD` is passed:
    so answers still stream token by token, and a number is checked whole before it shows.
    Profanity is checked per released piece (a word split across pieces can slip through).

    A scan back from the end, never more than `OUTPUT_HOLD` characters: this runs on every
    streamed token (a backtracking regex here once took seconds on "a1a1...!").
    """
    start = pos = len(text)
    while pos > 0:
        end = pos - 1 if text[pos - 1] in _SEPARATORS else pos
        chunk_start = end
        while chunk_start > 0 and (text[chunk_start - 1].isalnum() or text[chunk_start - 1] in _RUN_CHARS):
            chunk_start -= 1
            if len(text) - chunk_start > OUTPUT_HOLD:
                return len(text)
        chunk = text[chunk_start:end]
        # The last chunk, with no separator after it yet, may still grow into an address
        # ("jane.doe" before its "@"): held until the next separator shows it ended.
        if not chunk or (end < len(text) and not any(c.isdigit() or c in "@+" for c in chunk)):
            break
        start = pos = chunk_start
    return start


@dataclass(slots=True)
class Answer:
    """What the handler produced, as the guarded stream saw it. `engine_started` is when its
    engine request began, when that was before the stream was read (a speculative start)."""

    text: str = ""
    error: LLMError | None = None
    first_token: float | None = None
    llm_time: float = 0.0
    engine_started: float | None = None


async def moderated(
    deltas: AsyncGenerator[str, None], moderator: Moderator, turn: Turn, config: ModerationConfig
) -> AsyncGenerator[str, None]:
    """The answer as the user may see it: each piece checked before release, so personal data
    or profanity in a generated answer is redacted or withheld before it is shown or saved
    (see `boundary`)."""
    held = ""

    async def release(segment: str) -> tuple[str, bool]:
        verdict = await moderator.check(turn, segment, config, direction="output")
        return (messages.MODERATION_OUTPUT_WITHHELD, True) if verdict.refused else (verdict.text, False)

    async with aclosing(deltas):
        try:
            async for delta in deltas:
                held += delta
                cut = boundary(held)
                if cut:
                    text, stop = await release(held[:cut])
                    held = held[cut:]
                    yield text
                    if stop:
                        return
        except LLMError:
            if held:  # what was generated before the failure is still checked, then shown
                yield (await release(held))[0]
            raise
    if held:
        yield (await release(held))[0]


async def guarded(deltas: AsyncGenerator[str, None], answer: Answer) -> AsyncGenerator[str, None]:
    """The handler's stream as the sink sees it: an LLM failure becomes a notice to
    the user (appended if the answer had started), never an exception in the sink."""
    started = answer.engine_started or time.perf_counter()
    try:
        async with aclosing(deltas):
            async for delta in deltas:
                if answer.first_token is None:
                    answer.first_token = time.perf_counter()
                answer.text += delta
                yield delta
    except LLMError as exc:
        answer.error = exc
        yield messages.interrupted(exc) if answer.text.strip() else messages.for_user(exc)
    finally:
        answer.llm_time = time.perf_counter() - started
