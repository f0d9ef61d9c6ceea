"""The adapter extension point: how `parley serve` finds and runs platform adapters.

Adapters live in the `adapters` package and plug in through the `parley.adapters`
entry-point group (see pyproject.toml), so `bot/` never imports an adapter. An
entry point names a factory `create(runtime) -> Adapter | None`; it returns None
when its platform is not configured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol

from bot.store.inbox import Inbox
from bot.reply import ReplySink
from bot.turns import Turn

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)


class Adapter(Protocol):
    platform: str

    async def run(self, inbox: Inbox) -> None:
        """Own the platform connection: put each user message into the inbox as a Turn
        and acknowledge the platform. Runs until cancelled, then closes the connection."""
        ...

    def sink_for(self, turn: Turn) -> ReplySink:
        """Where the answer to `turn` goes. Platform failures belong in the sink's calls."""
        ...

    # Optional: `async def aclose(self) -> None`, called once the turns in flight have been
    # answered, to close the platform clients that the sinks use.


AdapterFactory = Callable[["Runtime"], "Adapter | None"]


def adapter_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="parley.adapters"))


def create_adapter(name: str, runtime: Runtime) -> Adapter | None:
    """Load one adapter's module (only now, so an unused platform costs nothing) and create it."""
    (ep,) = entry_points(group="parley.adapters", name=name)
    factory: AdapterFactory = ep.load()
    return factory(runtime)


def configured_adapters(runtime: Runtime, *, exclude: tuple[str, ...] = ("console",)) -> list[Adapter]:
    adapters = []
    for name in adapter_names():
        if name not in exclude and (adapter := create_adapter(name, runtime)) is not None:
            log.info("adapter %s enabled", name)
            adapters.append(adapter)
    return adapters
