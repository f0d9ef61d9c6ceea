"""The stage that answers a user's yes or no to a write action waiting for it (bot/actions).

A turn whose whole text is a yes or a no (in the languages routing knows), right after the
bot asked, from the user who has a write call waiting in this conversation, decides that call: yes runs it once (the
pending call is taken atomically, so a second yes, a platform retry or another replica finds
it done), no cancels it. Any other turn goes on as usual and leaves the call waiting until it
expires. What the call returned is shown as data, through output moderation like an answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing

from bot import messages
from bot.actions.audit import Entry
from bot.actions.confirm import Decision, PendingCalls
from bot.actions.loop import Actions, Call
from bot.dialogue.guard import moderated
from bot.dialogue.stages import History, TurnState
from bot.moderation.moderator import Moderator
from bot.ops.logs import turn_fields
from bot.routing.router import ACTION
from bot.store.context import Message, estimate_tokens
from bot.turns import Outcome, Reply

log = logging.getLogger(__name__)

# Whole messages only, after case folding and trimming punctuation at the ends.
YES = frozenset(
    {
        *("y", "yes", "yeah", "yep", "sure", "ok", "okay", "confirm", "confirmed", "go ahead", "do it"),
        *("please do", "yes please", "oui", "d'accord", "sí", "si", "vale", "claro", "ja", "jawohl", "klar"),
        *("sim", "pode", "confirmo", "はい", "お願いします", "是", "好", "好的", "确认", "確認", "可以"),
    }
)
NO = frozenset(
    {
        *("n", "no", "nope", "nah", "cancel", "stop", "don't", "dont", "non", "annule", "annuler", "cancela"),
        *("nein", "abbrechen", "não", "nao", "いいえ", "キャンセル", "不", "不要", "取消"),
    }
)
EDGES = " \t\r\n.!?,;:\u3002\uff01\uff1f\u3001\u2026"  # trimmed from both ends (str.strip: linear)


def yes_or_no(text: str) -> Decision | None:
    """`confirmed` for a whole-message yes, `cancelled` for a no, else None."""
    if len(text) > 40:
        return None
    word = " ".join(text.strip(EDGES).casefold().split())
    if word in YES:
        return "confirmed"
    if word in NO:
        return "cancelled"
    return None


def _asked(state: TurnState) -> bool:
    """Whether the bot's last message in this conversation asked for a yes: a bare "yes" to
    anything else (say, an offer of more detail) must not run a call asked about earlier."""
    said = [m for m in state.context.messages if m.role == "assistant"]
    return bool(said) and messages.CONFIRM_ASK in said[-1].content


class ConfirmAction:
    def __init__(self, actions: Actions, pending: PendingCalls, moderator: Moderator, history: History) -> None:
        self._actions, self._pending, self._moderator, self._history = actions, pending, moderator, history

    async def __call__(self, state: TurnState) -> Reply | None:
        turn = state.turn
        decision = yes_or_no(turn.text) if turn.command is None else None
        if decision is None or not _asked(state):
            return None
        call_id = await self._pending.latest(turn.key, turn.user)
        if call_id is None:
            return None  # a plain "ok" or "no" with nothing waiting is an ordinary turn
        taken = await self._pending.take(call_id, turn.key, turn.user, decision)
        # (The id is this user's own, so the store's "someone else's" answer cannot come back here.)
        if taken.found == "done":
            text = messages.action_already(taken.before)
        elif taken.pending is None:
            text = messages.ACTION_EXPIRED
        else:
            text = await self._decide(state, taken.pending.action, taken.pending.arguments, decision)
        shown = await self._show(state, text)
        await self._history.save(
            state,
            [
                Message("user", turn.text, estimate_tokens(turn.text)),
                Message("assistant", shown, estimate_tokens(shown)),
            ],
        )
        return state.reply(Outcome.ANSWERED, text=shown, intent=ACTION, route_step="confirm")

    async def _decide(self, state: TurnState, action: str, arguments: dict[str, object], decision: Decision) -> str:
        turn = state.turn
        spec = self._actions.catalog.specs.get(action)
        if decision == "cancelled" or spec is None:
            await self._actions.audit.record(
                Entry(turn, action, "write", dict(arguments), "cancelled" if spec else "unavailable")
            )
            return messages.ACTION_CANCELLED if spec else messages.ACTION_UNAVAILABLE
        log.info("write action %s confirmed", action, extra=turn_fields(turn))
        outcome = await self._actions.run(turn, Call(spec, dict(arguments)))
        if outcome.error is not None:
            return messages.action_failed(action, outcome.error.reason)
        assert outcome.result is not None
        data = json.dumps(outcome.result.data, ensure_ascii=False, sort_keys=True, default=str)
        return messages.action_done(action, data[: self._actions.settings.result_chars])

    async def _show(self, state: TurnState, text: str) -> str:
        async def one() -> AsyncGenerator[str, None]:
            yield text

        deltas = one()
        if state.tenant.moderation.check_output:
            deltas = moderated(deltas, self._moderator, state.turn, state.tenant.moderation)
        async with aclosing(deltas):
            return await state.sink.stream(deltas)
