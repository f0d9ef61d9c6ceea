"""The way back to the user: reply sinks, and the post-then-edit streaming they share.

A `ReplySink` is what the dialogue manager writes a turn's answer to. Platforms
whose messages can be edited (Slack, Discord) only need to provide a
`MessageEditor` (post a message, edit a message); `EditingSink` does the rest:
it posts as soon as the first token exists, edits at most once per `interval`
(coalescing every token in between, never an edit per token), edits a last time
with the final text, and continues in a new message when the answer outgrows the
platform's limit, splitting between paragraphs and never inside a code block
when that can be avoided.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from bot import messages
from bot.turns import Turn


class ReplySink(Protocol):
    async def send(self, text: str) -> None:
        """Deliver a complete message (help, an error, a notice)."""
        ...

    async def stream(self, chunks: AsyncIterable[str]) -> str:
        """Deliver an answer as it is generated; returns the text delivered."""
        ...


@dataclass(frozen=True, slots=True)
class Offer:
    """A write action waiting for its asker's yes (`bot.actions.confirm`), to be shown as
    Confirm / Cancel buttons under the question: the pressed button comes back as a turn
    with `command="choice"`, `text` "confirm" or "cancel" and `reply_to` = `call`."""

    call: str  # the pending call's id
    what: str  # the call in words (the operator's wording with the model's arguments: escape it)
    expires: float  # unix time


# How a press ended: the call was confirmed, cancelled or had expired (its buttons give way to
# that), or the presser is not the asker ("refused": only they are told, the buttons stay).
Settled = Literal["confirmed", "cancelled", "expired", "refused"]


@runtime_checkable
class Choices(Protocol):
    """Optional beside `ReplySink`: a platform with buttons. A sink without it leaves the
    choice to the words the question ends with (a typed yes or no)."""

    async def offer(self, offer: Offer) -> None:
        """Show Confirm / Cancel for the call, after the question."""
        ...

    async def settle(self, outcome: Settled) -> None:
        """The press this choice turn is has ended: replace the call's buttons with the outcome
        (on every screen that shows them), or, when `refused`, tell the presser alone
        (`messages.ACTION_NOT_YOURS`) and leave the buttons to the asker."""
        ...


@dataclass(frozen=True, slots=True)
class Source:
    """A passage of the knowledge base an answer drew on, cited under it as `[n]`."""

    title: str  # the document's title, with the section's heading when it has its own
    url: str  # a link to the document ("" when it has none)
    origin: str  # where it was ingested from (a path or URL): named when there is no link

    @property
    def text(self) -> str:
        return f"{self.title} ({self.url or self.origin})"


@runtime_checkable
class Citing(Protocol):
    """Optional beside `ReplySink`: a platform that shows an answer's sources as an element of
    its own (Slack's context block of links). A sink without it gets them as text after the
    answer (`messages.sources`)."""

    async def cite(self, sources: Sequence[Source]) -> None:
        """Called once the answer's text has streamed, before the sink finishes the message."""
        ...


async def cited(
    chunks: AsyncGenerator[str, None], sources: Sequence[Source], sink: ReplySink
) -> AsyncGenerator[str, None]:
    """`chunks`, then the sources the handler put in `sources` while producing them: handed to a
    `Citing` sink (before it finishes the message), else as text after the answer. Closing this
    stream early closes `chunks`, and nothing is cited under an answer that did not finish."""
    async with aclosing(chunks):
        async for chunk in chunks:
            yield chunk
    if not sources:
        return
    if isinstance(sink, Citing):
        await sink.cite(sources)
    else:
        yield messages.sources([f"[{n}] {source.text}" for n, source in enumerate(sources, 1)])


class MessageEditor(Protocol):
    async def post(self, text: str) -> str:
        """Post a new message; returns its platform id."""
        ...

    async def edit(self, message_id: str, text: str) -> None: ...


class ReplyJournal(Protocol):
    """The platform ids of the messages an answer has posted so far, kept outside the worker
    (in Redis beside the turn's inbox entry). A turn taken over from a worker that died
    mid-answer starts from `ids`, so it edits those messages instead of posting a second answer."""

    ids: Sequence[str]

    async def record(self, ids: Sequence[str]) -> None: ...


class NoJournal:
    """The journal of an inbox that does not outlive the process: nothing to resume."""

    ids: Sequence[str] = ()

    async def record(self, ids: Sequence[str]) -> None:
        return None


NO_JOURNAL: ReplyJournal = NoJournal()


class SinkFactory(Protocol):
    """What an adapter gives the dialogue manager so it can answer a turn later."""

    def sink_for(self, turn: Turn, journal: ReplyJournal = NO_JOURNAL) -> ReplySink:
        """A sink for the answer to `turn`; `journal` (a durable inbox's, else `NO_JOURNAL`)
        holds the messages a stopped worker had already posted for it."""
        ...


FENCE = "```"
CLOSE_RESERVE = len("\n" + FENCE)


def open_fence(text: str) -> str | None:
    """The opening line of the code block still open at the end of `text`, if any."""
    opening = None
    for line in text.split("\n"):
        if line.lstrip().startswith(FENCE):
            opening = None if opening is not None else line.strip()
    return opening


def split_first(text: str, limit: int) -> tuple[str, str]:
    """Cut `text` into a first page of at most `limit` characters and the rest.

    Prefers, in order: a paragraph break outside code, a line break outside code
    (each only if it leaves a page at least a third full), a line break inside a
    code block (the block is closed on this page and reopened on the next), a
    space, and finally a hard cut. The choice depends only on the first `limit`
    characters, so a page does not change once the answer has grown past it.
    """
    if len(text) <= limit:
        return text, ""
    window = text[: limit - CLOSE_RESERVE]
    floor = limit // 3

    def outside_code(sep: str) -> int:
        pos = window.rfind(sep)
        while pos >= floor:
            if open_fence(window[:pos]) is None:
                return pos
            pos = window.rfind(sep, 0, pos)
        return -1

    for sep in ("\n\n", "\n"):
        cut = outside_code(sep)
        if cut > 0:
            return text[:cut].rstrip(), text[cut:].lstrip("\n")
    cut = window.rfind("\n")
    if cut < floor:
        cut = window.rfind(" ")
    if cut < floor:
        cut = len(window)
    head, rest = text[:cut], text[cut:].lstrip("\n") if text[cut : cut + 1] == "\n" else text[cut:]
    fence = open_fence(head)
    if fence is not None:
        head, rest = head.rstrip("\n") + "\n" + FENCE, fence + "\n" + rest
    return head, rest


def split_pages(text: str, limit: int) -> list[str]:
    pages = []
    while True:
        page, text = split_first(text, limit)
        pages.append(page)
        if not text:
            return pages


class EditingSink:
    """`ReplySink` for platforms that post then edit. One instance per answer."""

    def __init__(
        self, editor: MessageEditor, *, limit: int, interval: float, journal: ReplyJournal = NO_JOURNAL
    ) -> None:
        self._editor = editor
        self._limit = limit
        self._interval = interval
        self._journal = journal
        # Platform ids of the messages posted so far, in order: a taken-over turn's come from the
        # journal, and the first text shown edits them ("" never equals a page, so each is edited).
        self._ids: list[str] = list(journal.ids)
        self._shown: list[str] = [""] * len(self._ids)  # what each of them shows now
        self.resuming = bool(self._ids)  # continuing the messages of a worker that stopped
        self.first_visible_at: float | None = None
        self.calls = 0  # posts and edits made, for the benchmarks

    async def send(self, text: str) -> None:
        await self._show(text)

    async def stream(self, chunks: AsyncIterable[str]) -> str:
        text = ""
        dirty = asyncio.Event()
        done = False

        async def flush() -> None:
            # Runs beside the token loop, so a slow platform call never stalls reading
            # the engine's stream; tokens that arrive meanwhile go into the next edit.
            while True:
                await dirty.wait()
                dirty.clear()
                started = time.monotonic()
                await self._show(text)
                if done and not dirty.is_set():
                    return
                await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))

        flusher = asyncio.create_task(flush())
        try:
            async for chunk in chunks:
                text += chunk
                if text.strip():
                    dirty.set()
                if flusher.done():
                    flusher.result()  # a platform error: stop reading the engine
            done = True
            dirty.set()
            await flusher
        finally:
            if not flusher.done():
                flusher.cancel()
                await asyncio.gather(flusher, return_exceptions=True)
        return text

    async def _show(self, text: str) -> None:
        if not text.strip():
            return
        pages = split_pages(text, self._limit)
        for i, page in enumerate(pages):
            if i < len(self._ids):
                if self._shown[i] != page:
                    await self._editor.edit(self._ids[i], page)
                    self.calls += 1
                    self._shown[i] = page
            else:
                self._ids.append(await self._editor.post(page))
                self.calls += 1
                self._shown.append(page)
                await self._journal.record(self._ids)
                if self.first_visible_at is None:
                    self.first_visible_at = time.monotonic()
