"""What a support desk is to Parley: the ticket of a handed-off conversation, the lines of a
transcript, and the protocols an adapter implements to offer a desk (`Desk`), to show a
person's reply as such (`AgentRelay`) or to cap new tickets (`HandoffGate`). `bot/` never
imports an adapter: adapters register these through their `AdapterContext`.

Where a conversation's tickets go is its profile's `handoff_channel` (the desk's "target"), or
the desk's own default (PARLEY_HANDOFF_SLACK_CHANNEL) when the profile names none; a desk
learns which channels are its own from the profiles in force (`NamedChannels`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bot.turns import ConversationKey, Turn, split_meta

if TYPE_CHECKING:
    from bot.profiles import Overrides, Profiles
    from bot.tenants import ProfileSource, Tenants


@dataclass(frozen=True, slots=True)
class Ticket:
    """A conversation handed to people: where its desk thread is and how to reach the customer
    later (`address` and `reply_to` of the turn that handed it off; never its one-off `handle`)."""

    key: ConversationKey
    desk: str  # the desk's name ("slack")
    thread: str  # the desk's id for the ticket thread ("" until the desk has opened it)
    user: str  # the customer
    reason: str  # request | anger | failures
    opened: float = field(default_factory=time.time)
    address: dict[str, str] = field(default_factory=dict)
    reply_to: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["key"] = [self.key.platform, self.key.tenant, self.key.channel, self.key.thread]
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Ticket:
        data = json.loads(raw)
        data["key"] = ConversationKey(*data["key"])
        if "meta" in data:  # stored by a version before `address`: what it kept is the address
            data["address"] = split_meta(data.pop("meta"))["address"]
        return cls(**data)

    def turn(self, *, command: str, user: str, text: str, event_id: str, agent: str = "") -> Turn:
        """A turn of the customer's conversation for an event at the desk (a reply, a resolve)."""
        return Turn.of(
            self.key,
            user=user,
            text=text,
            event_id=event_id,
            command=command,
            reply_to=self.reply_to,
            address=dict(self.address),
            desk=self.desk,
            desk_thread=self.thread,
            agent=agent,
        )


@dataclass(frozen=True, slots=True)
class Said:
    """A line of a transcript: who (a label of Parley's own) and what they wrote (anyone's text)."""

    speaker: str
    text: str


class Desk(Protocol):
    """Where people answer handed-off conversations. An adapter that offers one registers it
    (`AdapterContext.register_desk`) under its `name` once it is ready to take tickets (`bot/` never imports an
    adapter)."""

    name: str  # every call raises `PlatformError` when the desk cannot be reached

    def reaches(self, key: ConversationKey | None, target: str) -> bool:
        """Whether a ticket of conversation `key` has a place at this desk: `target` (its
        profile's `handoff_channel`), or the desk's default when that is "". No I/O: a place not
        known yet to be unfit counts (`open` checks it). `key` None: a conversation nobody named,
        which only a default that needs no more than itself can take."""
        ...

    async def open(self, ticket: Ticket, target: str = "") -> str:
        """Start a ticket thread (who, where, why, how to hand back) in `target`, "" for the desk's
        default; returns the thread's id. `DeskRefused` when that place is not fit for tickets."""
        ...

    async def post(self, thread: str, text: str) -> None:
        """Add a notice of Parley's own for the people to a ticket thread, shown as text (it may
        name a person, so never as markup that notifies or links)."""
        ...

    async def quote(self, thread: str, lines: Sequence[Said]) -> None:
        """Add what others wrote (the transcript, a customer's later message) to a ticket thread:
        each line's text quoted as a block under its speaker, so that no text can pass for a
        line of Parley's own, nor notify or link. No lines: say there were none."""
        ...


@runtime_checkable
class AgentRelay(Protocol):
    """A sink that shows a person's reply as such (the web chat: a bubble of its own kind with
    their name), not as one more message of the bot's."""

    async def relay(self, agent: str, text: str) -> None: ...


class HandoffGate(Protocol):
    """A cap on new tickets from one platform, so that users who cost nothing to make (the web
    chat's anonymous visitors) cannot flood the desk. An adapter registers one
    (`AdapterContext.register_handoff_gate`) under its platform when it is created."""

    async def admit(self, turn: Turn, reason: str) -> bool:
        """Count a ticket for `turn` and say True, or say False (and log why) when over a cap."""
        ...


def desk_for(desks: Mapping[str, Desk], profiles: ProfileSource, turn: Turn) -> Desk | None:
    """The desk a ticket of `turn`'s conversation goes to: the first registered desk with a place
    for it in the desk channel its profile names (`handoff_channel` of a web page's profile, else
    of the channel's; "" the desk's default)."""
    target = profiles.profile(turn.tenant, turn.profile or turn.channel).handoff_channel
    return next((desk for desk in desks.values() if desk.reaches(turn.key, target)), None)


class NamedChannels:
    """The desk channels the profiles in force name (`handoff_channel`), by tenant: a desk's own
    channels besides its default, where what people write may be a reply to a customer. Worked
    out again only when the profiles change (`Profiles.load` replaces its overrides with each new
    version), so an event costs a set look-up, not a pass over every profile."""

    def __init__(self, profiles: Profiles) -> None:
        self._profiles = profiles
        self._seen: tuple[Tenants, Overrides] | None = None  # the tenants file and overrides worked out
        self._by_tenant: dict[str, frozenset[str]] = {}

    def __call__(self, tenant: str = "") -> frozenset[str]:
        """Those of `tenant`'s profiles (its own settings, its channels'); "" every tenant's."""
        profiles = self._profiles
        if self._seen is None or self._seen[0] is not profiles.tenants or self._seen[1] is not profiles.overrides:
            self._seen, self._by_tenant = (profiles.tenants, profiles.overrides), {}
        if (found := self._by_tenant.get(tenant)) is not None:
            return found
        tenants = profiles.tenants
        configs = [tenants.get(tenant)] if tenant else [tenants.default, *tenants.listed.values()]
        keys = {*tenants.channels, *profiles.overrides}
        configs += [profiles.profile(t, c) for t, c in keys if not tenant or t == tenant]
        found = self._by_tenant[tenant] = frozenset(c.handoff_channel for c in configs if c.handoff_channel)
        return found
