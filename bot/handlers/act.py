"""Actions as a handler: for a conversation that may use actions, the model first decides
which to call (bot/actions/loop.py); read calls run at once and their results go back to it,
a write call is put to the user for a yes (bot/actions/confirm.py), and the answer streams
from the results. When the model calls nothing, the turn is answered by the handler routing
had chosen (chat or qa), exactly as without actions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import replace

from bot import messages
from bot.actions.loop import Call, Outcome, check, results_message, with_actions
from bot.actions.spec import PLACEHOLDER, ActionSpec
from bot.errors import LLMError
from bot.handlers import Handler, Request, Services, register, system_prompt
from bot.handlers.chat import ChatHandler
from bot.handlers.qa import QAHandler
from bot.llm.prompts import build_messages
from bot.ops.logs import turn_fields
from bot.reply import Offer
from bot.routing.router import ACTION

log = logging.getLogger(__name__)


def described(spec: ActionSpec, arguments: dict[str, object]) -> str:
    """A write call in words, for the user's yes: the operator's `confirm` template with the
    arguments filled in, or the action's name and arguments."""
    if spec.confirm:
        return PLACEHOLDER.sub(lambda m: str(arguments.get(m[1], "")), spec.confirm)
    shown = ", ".join(f"{k} = {v}" for k, v in sorted(arguments.items()))
    return f"run {spec.name} ({shown})" if shown else f"run {spec.name}"


@register(ACTION)
class ActionHandler:
    def __init__(self, services: Services) -> None:
        self._settings = services.settings
        self._llm = services.llm
        self._actions = services.actions
        self._pending = services.pending
        # When the model calls nothing, the handler routing chose answers (`route.otherwise`).
        self._others: dict[str, Handler] = {"chat": ChatHandler(services), "qa": QAHandler(services)}

    async def answer(self, request: Request) -> AsyncGenerator[str, None]:
        turn = request.turn
        specs = self._actions.catalog.allowed(request.tenant, turn.channel)
        otherwise = request.route.otherwise or "chat"
        fallback = self._others.get(otherwise, self._others["chat"])
        plain = replace(request, route=replace(request.route, intent=otherwise, otherwise=None))
        limits = self._actions.settings
        system = with_actions(system_prompt(self._settings, request.tenant), specs)
        prompt = build_messages(system, request.context, turn.text)
        extra: list[dict[str, str]] = []
        deadline = time.monotonic() + limits.turn_timeout
        used = 0
        while specs and used < limits.max_calls and time.monotonic() < deadline:
            try:
                picks = await self._actions.decide([*prompt, *extra], specs, limits.max_calls - used, request.scope)
            except LLMError as exc:
                log.warning(
                    "action decision failed (%s); answering without", type(exc).__name__, extra=turn_fields(turn)
                )
                break
            if not picks:
                break
            used += len(picks)
            outcomes: list[Outcome] = []
            reads: list[Call] = []
            write: Call | None = None
            for spec, arguments in picks:
                error = check(spec, arguments)
                if error is not None:
                    outcomes.append(await self._actions.rejected(turn, spec, arguments, error))
                elif spec.mode == "read":
                    reads.append(Call(spec, arguments))
                elif write is None:
                    write = Call(spec, arguments)
            outcomes += await self._actions.run_all(turn, reads, deadline)
            if write is not None:
                yield await self._ask(request, write)
                return
            extra += [
                {"role": "assistant", "content": f"(calling: {', '.join(o.call.spec.name for o in outcomes)})"},
                results_message(outcomes, limits.result_chars),
            ]
        if not extra:
            async for delta in fallback.answer(plain):
                yield delta
            return
        async with self._llm.stream([*prompt, *extra], scope=request.scope) as stream:
            async for delta in stream:
                yield delta

    async def _ask(self, request: Request, call: Call) -> str:
        """Keep the write call for the user's yes and say what it will do."""
        pending = await self._pending.create(request.turn, call.spec.name, call.arguments)
        await self._actions.record(request.turn, call, "pending", detail=pending.id)
        what = described(call.spec, call.arguments)
        request.offers.append(Offer(pending.id, what, pending.expires))  # buttons, where the platform has them
        return messages.confirm_action(what, max(1, self._pending.ttl // 60))
