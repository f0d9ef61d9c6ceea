"""The stage that answers a user's yes or no to a write action waiting for it (bot/actions).

A Confirm or Cancel button pressed (a `choice` turn that names the call, from a platform
with buttons: `bot.reply.Choices`), or a turn whose whole text is a yes or a no (in the
languages routing knows) right after the bot asked, decides the write call waiting for that
user in this conversation: yes runs it once (the pending call is taken atomically, so a
second yes or click, a platform retry or another replica finds it done), no cancels it; a
stranger's click changes nothing. Any other turn goes on as usual and leaves the call waiting
until it expires. What the call returned is shown as data, through output moderation like an
answer. The stage runs before input moderation and the handoff gate: a click is not a
message for people, and a whole-message yes or no holds nothing to moderate.
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
from bot.errors import PlatformError
from bot.moderation.moderator import Moderator
from bot.ops.logs import turn_fields
from bot.reply import Choices, Settled
from bot.routing.router import ACTION
from bot.store.context import Message, estimate_tokens
from bot.turns import CHOICE, Outcome, Reply

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


def _settled(decision: str) -> Settled:
    return "confirmed" if decision == "confirmed" else "cancelled"


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
        if turn.command == CHOICE:  # a Confirm or Cancel button: the call is named
            call_id: str | None = turn.reply_to or ""
            decision: Decision | None = "confirmed" if turn.text == "confirm" else "cancelled"
        else:
            decision = yes_or_no(turn.text) if turn.command is None else None
            if decision is None or not _asked(state):
                return None
            call_id = await self._pending.latest(turn.key, turn.user)
            if call_id is None:
                return None  # a plain "ok" or "no" with nothing waiting is an ordinary turn
        assert decision is not None and call_id is not None
        taken = await self._pending.take(call_id, turn.key, turn.user, decision)
        if taken.found == "other":  # someone else pressed the asker's button (only a press can be)
            log.info("a stranger pressed %s on call %s: refused", turn.text, call_id, extra=turn_fields(turn))
            if isinstance(state.sink, Choices):
                await state.sink.settle("refused")  # to the presser alone; nothing in the conversation
            else:
                await state.sink.send(messages.ACTION_NOT_YOURS)
            return state.reply(Outcome.IGNORED, error="not the asker's press", intent=ACTION, route_step="confirm")
        settled: Settled
        if taken.found == "done":
            text, settled = messages.action_already(taken.before), _settled(taken.before)
        elif taken.pending is None:
            text, settled = messages.ACTION_EXPIRED, "expired"
        else:
            settled = decision
            text = await self._decide(state, taken.pending.action, taken.pending.arguments, decision)
        shown = await self._show(state, text)
        if turn.command == CHOICE and isinstance(state.sink, Choices):
            try:
                await state.sink.settle(settled)
            except PlatformError as exc:  # the buttons stay; a later press is told the outcome
                log.warning("could not take the buttons away: %r", exc, extra=turn_fields(turn))
        # A press is kept as the button's label: what the user did, in the words they saw.
        said = (
            turn.text
            if turn.command != CHOICE
            else (messages.CONFIRM_BUTTON if decision == "confirmed" else messages.CANCEL_BUTTON)
        )
        await self._history.save(
            state,
            [
                Message("user", said, estimate_tokens(said)),
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
