"""Handlers: one per kind of intent, behind one small protocol, found through a registry.

A handler turns a request (the turn, its context, where routing sent it, the tenant's
settings) into a stream of text. It builds its own prompt and asks the LLM client or
the knowledge base for what it needs; the dialogue manager owns everything around it
(ordering, moderation, context, delivery). A new handler is a module here with a class
decorated `@register("intent")`, imported in `build_handlers`; nothing else changes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bot.config import Settings
from bot.llm.client import LLM, CallScope
from bot.reply import Offer, Source
from bot.routing.router import Route
from bot.store.context import Context
from bot.tenants import TenantConfig
from bot.turns import Turn

if TYPE_CHECKING:
    from bot.actions.confirm import PendingCalls
    from bot.actions.loop import Actions
    from bot.knowledge.base import KnowledgeBase


@dataclass(frozen=True, slots=True)
class Request:
    """One turn as a handler sees it. `turn.text` is the moderated text (redacted where
    the tenant said so); `route.text` is what the handler works on; every engine call it
    makes passes `scope` (the conversation's engine, the turn's token meter)."""

    turn: Turn
    context: Context
    route: Route
    tenant: TenantConfig
    scope: CallScope
    # Buttons to show under the answer once it is streamed (a write action's Confirm / Cancel):
    # a handler appends, the dialogue manager hands them to a sink that has buttons.
    offers: list[Offer] = field(default_factory=list)
    # The passages the answer draws on, cited under it (`bot.reply.Citing`, else as text): a
    # handler appends before it streams the answer.
    sources: list[Source] = field(default_factory=list)


class Handler(Protocol):
    def answer(self, request: Request) -> AsyncGenerator[str, None]:
        """Stream the answer's text (an async generator: the caller closes it early with
        `aclose()`, which must cancel the work, e.g. abort the engine request)."""
        ...


@runtime_checkable
class ChatAlike(Protocol):
    """Optional beside `answer`: a handler that sometimes answers exactly as plain chat does
    (QA for a tenant with no knowledge base) says so, so that a chat answer already started
    for the turn can be kept (see `DialogueManager`, speculation)."""

    async def answers_as_chat(self, request: Request) -> bool: ...


@dataclass(frozen=True)
class Services:
    """What the composition root hands every handler factory."""

    settings: Settings
    llm: LLM
    kb: KnowledgeBase
    actions: Actions
    pending: PendingCalls  # write calls waiting for the user's yes


HandlerFactory = Callable[[Services], Handler]
_registry: dict[str, HandlerFactory] = {}


def register(intent: str) -> Callable[[HandlerFactory], HandlerFactory]:
    def add(factory: HandlerFactory) -> HandlerFactory:
        _registry[intent] = factory
        return factory

    return add


def system_prompt(settings: Settings, tenant: TenantConfig) -> str:
    return tenant.system_prompt or settings.context.system_prompt


def build_handlers(services: Services) -> dict[str, Handler]:
    """One instance of every registered handler, keyed by intent."""
    from bot.handlers import act, chat, qa, translate  # noqa: F401 - each registers itself

    return {intent: factory(services) for intent, factory in _registry.items()}
