"""The adapter extension point: how `parley serve` finds and runs platform adapters.

Adapters live in the `adapters` package and plug in through the `parley.adapters`
entry-point group (see pyproject.toml), so `bot/` never imports an adapter. An
entry point names a factory `create(context) -> Adapter | None`; it returns None
when its platform is not configured. The factory is handed an `AdapterContext`, the
part of the runtime an adapter may use, never the runtime itself: what it offers the
core back (a support desk, a cap on tickets, a link to its conversations) it registers
through the context.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from bot.errors import ConfigError
from bot.handoff.desk import desk_for
from bot.turns import ConversationKey, Turn

if TYPE_CHECKING:  # types only: what the runtime builds, never built here
    from redis.asyncio import Redis

    from bot.config import Settings
    from bot.handoff.desk import Desk, HandoffGate
    from bot.handoff.store import HandoffStore
    from bot.ops.health import Degraded
    from bot.ops.metrics import Metrics
    from bot.ops.stats import AnswerIndex
    from bot.profiles import Profiles
    from bot.reply import ReplyJournal, ReplySink
    from bot.store.context import ContextStore
    from bot.store.dedupe import Deduper
    from bot.store.inbox import Inbox

log = logging.getLogger(__name__)

# A URL that opens a customer's conversation on its platform (for a ticket's header), or None.
Link = Callable[[ConversationKey], str | None]


class Adapter(Protocol):
    platform: str

    async def run(self, inbox: Inbox) -> None:
        """Own the platform connection: put each user message into the inbox as a Turn
        and acknowledge the platform. Runs until cancelled, then closes the connection."""
        ...

    def sink_for(self, turn: Turn, journal: ReplyJournal = ...) -> ReplySink:
        """Where the answer to `turn` goes; `journal` holds what a stopped worker had already
        posted for it (`bot.reply.ReplyJournal`). Platform failures belong in the sink's calls."""
        ...

    # Optional: `async def aclose(self) -> None`, called once the turns in flight have been
    # answered, to close the platform clients that the sinks use.


@dataclass(frozen=True)
class AdapterContext:
    """What an adapter is given of the runtime (built by `Runtime.adapter_context`): the shared
    clients and stores it uses, and the registrations through which it offers the core a desk,
    a handoff gate or a conversation link. The registries are the runtime's own, read by the
    core at each use, so an adapter may register at any time (the Slack desk once Slack has
    confirmed its channel)."""

    settings: Settings
    redis: Redis | None
    metrics: Metrics
    store: ContextStore
    deduper: Deduper
    answers: AnswerIndex  # the messages that show answers, for 👍/👎 on them
    tickets: HandoffStore  # the handed-off conversations, which a desk looks its threads up in
    degraded: Degraded  # optional steps that failed and are being retried, shown in /readyz
    # Per-channel settings (`mention_rule`...) and the admin commands' API:
    # `profiles.profile(tenant, channel)`, `await profiles.set(tenant, channel, field, value, by=user)`.
    profiles: Profiles
    # The runtime's registries, filled only through the `register_*` methods.
    _desks: dict[str, Desk] = field(default_factory=dict, repr=False)
    _gates: dict[str, HandoffGate] = field(default_factory=dict, repr=False)
    _links: dict[str, Link] = field(default_factory=dict, repr=False)

    @property
    def links(self) -> Mapping[str, Link]:
        """Every platform's conversation link by platform, as registered so far and later (a
        live, read-only view: the adapter that registers one may be created after its reader)."""
        return MappingProxyType(self._links)

    def offers_person(self, turn: Turn) -> bool:
        """Whether "Talk to a person" belongs under answers in `turn`'s conversation: requests for
        a person are handed off, and a desk registered by now takes its tickets (`desk_for`)."""
        return self.settings.handoff.on_request and desk_for(self._desks, self.profiles, turn) is not None

    def register_desk(self, desk: Desk) -> None:
        """New tickets may go to `desk` from now on (`bot.handoff.desk.Desk`)."""
        self._desks[desk.name] = desk

    def register_handoff_gate(self, platform: str, gate: HandoffGate) -> None:
        """New tickets from `platform`'s users pass `gate` first."""
        self._gates[platform] = gate

    def register_link(self, platform: str, link: Link) -> None:
        """How a ticket links to a conversation of `platform`."""
        self._links[platform] = link


AdapterFactory = Callable[[AdapterContext], "Adapter | None"]


@contextlib.contextmanager
def needs_extra(extra: str, *, setting: str) -> Iterator[None]:
    """Around an adapter's import of its platform's libraries, which are an extra of their own
    (`pip install 'parley[slack]'`): an import that fails for want of one is a `ConfigError`
    naming the extra and the `setting` that asked for the platform. A failed import of Parley's
    own modules is a bug, and stays what it is."""
    try:
        yield
    except ImportError as exc:
        missing = (exc.name or "").partition(".")[0]
        if not missing or missing in ("bot", "adapters"):
            raise
        raise ConfigError(
            setting, f"the {extra} adapter needs {missing}, which is not installed: pip install 'parley[{extra}]'"
        ) from None


def adapter_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="parley.adapters"))


def create_adapter(name: str, context: AdapterContext) -> Adapter | None:
    """Load one adapter's module and create it. An adapter imports its platform's libraries only
    once its platform is configured, so one that is not installed costs nothing until then."""
    (ep,) = entry_points(group="parley.adapters", name=name)
    # Parley's own adapters import their libraries inside `create` (`needs_extra` there names the
    # setting that asked for the platform); this catches one whose module imports them at once.
    with needs_extra(name, setting=f"parley.adapters:{name}"):
        factory: AdapterFactory = ep.load()
    return factory(context)


def configured_adapters(context: AdapterContext, *, exclude: tuple[str, ...] = ("console",)) -> list[Adapter]:
    adapters = []
    for name in adapter_names():
        if name not in exclude and (adapter := create_adapter(name, context)) is not None:
            log.info("adapter %s enabled", name)
            adapters.append(adapter)
    return adapters
