"""Answers back to the browser: streamed pieces, then the whole answer, to every tab of the visitor.

A WebSocket frame costs little, but a frame per token still means hundreds of frames
and DOM updates an answer; pieces are coalesced to at most one `delta` frame per
`interval` (the text that arrives meanwhile goes into the next one, sent with the next
piece of the stream or at its end, so deltas always add up to the answer). Each delta says
where it starts (`at`), so a tab that opened mid-answer knows it missed the beginning
and waits for `done`, which always carries the whole answer. Nobody listening is not
an error: the dialogue manager saves the answer, and the next visit shows it.

A person's reply from the support desk is a `message` frame of its own kind,

    {"type": "message", "id", "reply_to", "text", "kind": "agent", "agent": "Ann (support team)"}

which the widget shows as a person's bubble under their name: nothing the model writes can
look like one (answers only ever come as `delta`/`done`, notices without a `kind`).

A write action waiting for the visitor's yes gets Confirm / Cancel (`bot.reply.Choices`): a
`choice` frame after the answer that asks, and, on the sink of the press's turn, a `settled`
frame that takes the buttons away in every tab.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterable
from typing import Any

from adapters.web import normalize
from adapters.web.fanout import Fanout
from bot import messages
from bot.ops.logs import turn_fields
from bot.reply import Offer, Settled
from bot.turns import Turn

log = logging.getLogger(__name__)

DELTA_INTERVAL = 0.05  # seconds: at most 20 delta frames a second per answer
AGENT = "agent"  # the `kind` of a message frame that is a person's reply


class WebSink:
    """`ReplySink` (and `Choices`) for one turn: frames go to every socket of the turn's visitor
    (its channel)."""

    def __init__(self, fanout: Fanout, turn: Turn) -> None:
        self._fanout = fanout
        self._turn = turn
        self._sent = itertools.count(1)

    async def _publish(self, frame: dict[str, Any]) -> None:
        if not await self._fanout.publish(self._turn.channel, normalize.encode(frame)):
            log.debug(
                "web: no tab open for %s; the saved context will show it", frame["type"], extra=turn_fields(self._turn)
            )

    async def send(self, text: str) -> None:
        """A complete message: a notice, an error, or a human agent's reply relayed to the visitor."""
        id_ = f"{self._turn.event_id}:m{next(self._sent)}"
        await self._publish(normalize.message(id_, text, reply_to=self._turn.event_id))

    async def relay(self, agent: str, text: str) -> None:
        """A person's reply from the support desk (`bot.handoff.desk.AgentRelay`): their own words,
        and who they are, apart."""
        id_ = f"{self._turn.event_id}:m{next(self._sent)}"
        frame = normalize.message(id_, text, reply_to=self._turn.event_id)
        await self._publish({**frame, "kind": AGENT, "agent": messages.agent_label(agent)})

    async def stream(self, chunks: AsyncIterable[str]) -> str:
        answer = self._turn.event_id
        text = ""
        sent = 0
        last = float("-inf")
        async for chunk in chunks:
            text += chunk
            now = time.monotonic()
            if now - last >= DELTA_INTERVAL and len(text) > sent:
                await self._publish(normalize.delta(answer, sent, text[sent:]))
                sent, last = len(text), now
        if len(text) > sent:  # the pieces always add up to the answer
            await self._publish(normalize.delta(answer, sent, text[sent:]))
        await self._publish(normalize.done(answer, text))
        return text

    async def offer(self, offer: Offer) -> None:
        """Confirm / Cancel for a write call, under the answer that asked (this turn's)."""
        await self._publish(normalize.choice(offer, reply_to=self._turn.event_id))

    async def settle(self, outcome: Settled) -> None:
        """On the sink of a press's turn: the call it pressed a button of (`reply_to`) is decided."""
        if not self._turn.reply_to:  # only a choice turn is settled; nothing names a call here
            log.warning("web: settle on a turn that names no call", extra=turn_fields(self._turn))
            return
        if outcome == "refused":  # not the asker's offer (a visitor only sees their own): a notice
            await self.send(messages.ACTION_NOT_YOURS)
            return
        await self._publish(normalize.settled(self._turn.reply_to, outcome))
