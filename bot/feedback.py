"""👍/👎 on answers: a vote arrives as a turn of the conversation (`command="feedback"`, text
"up" or "down", `reply_to` the answered turn's event id), from Slack and Discord reactions
and the web chat's buttons. One vote per user and answer, changeable; stored with the
figures `parley report` reads (`bot.ops.stats`)."""

from __future__ import annotations

import logging

from bot.ops.logs import turn_fields
from bot.ops.stats import Stats
from bot.turns import VOTES, Outcome, Turn

log = logging.getLogger(__name__)


class Feedback:
    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    async def vote(self, turn: Turn) -> tuple[Outcome, str]:
        """Store the turn's vote; returns the turn's outcome and, when nothing was stored, why."""
        vote = turn.text.strip().lower()
        if vote not in VOTES or not turn.reply_to:
            log.info("feedback %r on %r ignored: not a vote on an answer", vote, turn.reply_to, extra=turn_fields(turn))
            return Outcome.IGNORED, "not a vote"
        result = await self._stats.vote(turn, turn.reply_to, vote)
        if result == "unknown":
            log.info(
                "feedback on %s ignored: no such answer in this conversation", turn.reply_to, extra=turn_fields(turn)
            )
            return Outcome.IGNORED, "unknown answer"
        if result == "same":
            log.info("feedback on %s unchanged (%s again)", turn.reply_to, vote, extra=turn_fields(turn))
            return Outcome.IGNORED, "same vote"
        log.info("feedback %s on %s (%s)", vote, turn.reply_to, result, extra=turn_fields(turn))
        return Outcome.FEEDBACK, ""
