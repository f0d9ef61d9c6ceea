"""Handlers: one per kind of intent, behind one small protocol, found through a registry.

A handler turns a turn and its context into a stream of text. It builds its own
prompt and asks the LLM client for what it needs; the dialogue manager owns
everything around it (ordering, context, delivery). A new handler is a module
here with a class decorated `@register("intent")`; nothing else changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from bot.config import Settings
from bot.context import Context
from bot.llm import LLMClient
from bot.turns import Turn


class Handler(Protocol):
    def answer(self, turn: Turn, context: Context) -> AsyncIterator[str]:
        """Stream the answer's text. Closing the iterator early must cancel the work."""
        ...


HandlerFactory = Callable[[Settings, LLMClient], Handler]
_registry: dict[str, HandlerFactory] = {}


def register(intent: str) -> Callable[[HandlerFactory], HandlerFactory]:
    def add(factory: HandlerFactory) -> HandlerFactory:
        _registry[intent] = factory
        return factory

    return add


def build_handlers(settings: Settings, llm: LLMClient) -> dict[str, Handler]:
    """One instance of every registered handler, keyed by intent."""
    from bot.handlers import chat  # noqa: F401 - registers itself

    return {intent: factory(settings, llm) for intent, factory in _registry.items()}
