"""The console adapter: chat with Parley in a terminal, tokens printed as they arrive.

It is the embedded default (`parley chat`): no platform account needed. Each
line typed is a turn of one conversation; `/reset` forgets it, `/help` explains,
`/quit` (or Ctrl-D) leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterable
from typing import BinaryIO, TextIO

from bot import messages
from bot.adapter import AdapterContext
from bot.errors import InboxFull
from bot.reply import NO_JOURNAL, ReplyJournal, ReplySink
from bot.store.inbox import Inbox
from bot.turns import Turn, decode_text

COMMANDS = {"/help": "help", "/reset": "reset"}


class ConsoleSink:
    """Prints an answer as it streams; tells the prompt loop when the answer is complete."""

    def __init__(self, out: TextIO, answered: asyncio.Event) -> None:
        self._out = out
        self._answered = answered

    async def send(self, text: str) -> None:
        self._out.write(f"parley> {text}\n")
        self._out.flush()
        self._answered.set()

    async def stream(self, chunks: AsyncIterable[str]) -> str:
        text = ""
        self._out.write("parley> ")
        try:
            async for chunk in chunks:
                text += chunk
                self._out.write(chunk)
                self._out.flush()
        finally:
            self._out.write("\n")
            self._out.flush()
            if text.strip():
                self._answered.set()
        return text


def make_turn(line: bytes, *, user: str, conversation: str) -> Turn:
    text = decode_text(line).rstrip("\r\n")
    return Turn(
        platform="console",
        tenant="local",
        channel=user,
        thread=conversation,
        user=user,
        text=text,
        event_id=uuid.uuid4().hex,
        command=COMMANDS.get(text.strip().lower()),
    )


class ConsoleAdapter:
    """One terminal, one conversation. Each line is answered before the next prompt."""

    platform = "console"

    def __init__(self, *, stdin: BinaryIO | None = None, out: TextIO | None = None) -> None:
        self._in = stdin or sys.stdin.buffer
        self._out = out or sys.stdout
        self._user = getpass.getuser()
        self._answered = asyncio.Event()

    def sink_for(self, turn: Turn, journal: ReplyJournal = NO_JOURNAL) -> ReplySink:
        return ConsoleSink(self._out, self._answered)

    async def run(self, inbox: Inbox) -> None:
        """Returns at end of input or /quit, which ends `parley chat`."""
        lines = _read_lines(self._in)
        self._out.write("Type a message and press Enter. /help for commands, /quit or Ctrl-D to leave.\n")
        while True:
            self._out.write("you> ")
            self._out.flush()
            line = await lines.get()
            if not line or line.strip() in (b"/quit", b"/exit"):
                self._out.write("\n")
                return
            self._answered.clear()
            try:
                await inbox.put(make_turn(line, user=self._user, conversation="main"))
            except InboxFull:
                await ConsoleSink(self._out, self._answered).send(messages.BUSY)
                continue
            await self._answered.wait()


def _read_lines(stream: BinaryIO) -> asyncio.Queue[bytes]:
    """Lines from a blocking stream, read by a daemon thread so that Ctrl-C or SIGTERM
    never waits on a pending read; b"" marks the end of input."""
    with contextlib.suppress(OSError, ValueError):  # no descriptor (a test's BytesIO), or closed
        # A reader of the thread's own: Python's shutdown closes sys.stdin, which needs the lock
        # that the pending read holds, and aborts the process ("could not acquire lock").
        # The reader thread owns this file for the rest of the process, so no `with` here.
        stream = open(os.dup(stream.fileno()), "rb")  # noqa: SIM115 - outlives this function
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes] = asyncio.Queue()

    def pump() -> None:
        while True:
            line = stream.readline()
            try:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            except RuntimeError:  # the loop has closed: the chat is over
                return
            if not line:
                return

    threading.Thread(target=pump, name="console-stdin", daemon=True).start()
    return lines


def create(context: AdapterContext) -> ConsoleAdapter:
    return ConsoleAdapter()
