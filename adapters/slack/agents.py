"""Who may act as an agent at the support desk: answer a customer, or resolve a ticket.

Posting in the support channel is not enough. A person must belong to Parley's own
workspace (or its Enterprise Grid organisation): a Slack Connect guest from another
organisation can post in a shared channel, but must never speak to customers as
"Name (support team)". The event says which workspace the person is from (`user_team`);
`users.info` must agree. When `PARLEY_HANDOFF_AGENT_GROUPS` names Slack user groups, only
their members are agents; membership comes from `usergroups.users.list`, kept for
`PARLEY_HANDOFF_AGENT_REFRESH` seconds. What cannot be checked (Slack unreachable) is refused:
the person is told to try again, and nothing reaches the customer unchecked.

An `Agents` is one workspace's: its people and its groups, asked with its token. With many
workspaces (SLACK_CLIENT_ID) the desk keeps one per workspace, and "Parley's own workspace" is
the one the event came to (`Identity` from that workspace's installation). User groups are a
workspace's own, so PARLEY_HANDOFF_AGENT_GROUPS is for one workspace only (`adapters.slack`
refuses it with many).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.normalize import Identity
from adapters.slack.sink import call
from bot import messages
from bot.errors import PlatformError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Person:
    """What users.info says about someone, as far as the desk needs it."""

    id: str
    name: str
    team: str
    enterprise: str = ""
    stranger: bool = False  # Slack's `is_stranger`: someone Parley's workspace shares no channel with
    gone: bool = False  # deactivated, or a bot


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one desk action: the name to sign with, or why not (`refused`, for the log)
    and what the person is told (`notice`)."""

    name: str
    refused: str = ""
    notice: str = ""


class Agents:
    def __init__(
        self,
        client: Callable[[], AsyncWebClient],
        *,
        groups: Sequence[str] = (),
        refresh: float = 300.0,
        max_people: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Made for each call: an installed workspace's token is read (and refreshed before it
        # expires) when a call starts, never kept here past its expiry.
        self._client = client
        self._groups = tuple(groups)
        self._refresh = refresh
        self._clock = clock
        self._people: OrderedDict[str, tuple[float, Person]] = OrderedDict()
        self._max_people = max_people
        self._members: frozenset[str] | None = None  # of the agent groups, None until read once
        self._members_at = float("-inf")
        self._reading = asyncio.Lock()

    async def admit(self, user: str, *, team: str, me: Identity) -> Admission:
        """Whether `user` (who the event says is from workspace `team`) may act at the desk."""
        if team and team != me.team_id and not me.enterprise_id:
            # (In an Enterprise Grid organisation a colleague may be from a sibling workspace:
            # users.info says whether they are of the organisation.)
            return Admission(user, f"from another workspace ({team})", messages.AGENT_NOT_OURS)
        try:
            person = await self.person(user)
        except PlatformError as exc:
            return Admission(user, f"users.info failed ({exc.code or exc.status or exc})", messages.AGENT_UNCHECKED)
        if person.gone:
            return Admission(person.name, "deactivated or a bot", messages.AGENT_NOT_OURS)
        if person.stranger or not _ours(person.team, person.enterprise, me):
            return Admission(person.name, f"from another workspace ({person.team})", messages.AGENT_NOT_OURS)
        if self._groups:
            try:
                members = await self.members()
            except PlatformError as exc:
                return Admission(
                    person.name, f"agent groups unreadable ({exc.code or exc.status or exc})", messages.AGENT_UNCHECKED
                )
            if user not in members:
                return Admission(
                    person.name, "not in the agent groups " + ", ".join(self._groups), messages.AGENT_NOT_IN_GROUP
                )
        return Admission(person.name)

    async def person(self, user: str) -> Person:
        """users.info, kept for `refresh` seconds (a name, a workspace rarely change)."""
        now = self._clock()
        if (cached := self._people.get(user)) is not None and now - cached[0] < self._refresh:
            return cached[1]
        response = await call("users.info", self._client().users_info(user=user))
        found = response.get("user") or {}
        profile = found.get("profile") or {}
        person = Person(
            id=user,
            name=profile.get("display_name")
            or profile.get("real_name")
            or found.get("real_name")
            or found.get("name")
            or user,
            team=str(found.get("team_id") or profile.get("team") or ""),
            enterprise=str((found.get("enterprise_user") or {}).get("enterprise_id") or ""),
            stranger=bool(found.get("is_stranger")),
            gone=bool(found.get("deleted") or found.get("is_bot")),
        )
        self._people.pop(user, None)
        self._people[user] = (now, person)
        while len(self._people) > self._max_people:
            self._people.popitem(last=False)
        return person

    async def members(self) -> frozenset[str]:
        """The members of every agent group, read again once `refresh` seconds old. A failed
        read keeps the last list (and says so); with no list yet, it raises `PlatformError`."""
        async with self._reading:  # one read at a time: a burst of replies waits for it
            if self._clock() - self._members_at < self._refresh and self._members is not None:
                return self._members
            try:
                members: set[str] = set()
                for group in self._groups:
                    response = await call(
                        "usergroups.users.list", self._client().usergroups_users_list(usergroup=group)
                    )
                    members.update(str(u) for u in response.get("users") or ())
            except PlatformError as exc:
                if self._members is None:
                    raise
                log.warning("could not read the agent groups again (%s): the last list is kept", exc.code or exc)
                return self._members
            self._members, self._members_at = frozenset(members), self._clock()
            log.info("agent groups %s: %d members", ", ".join(self._groups), len(members))
            return self._members


def _ours(team: str, enterprise: str, me: Identity) -> bool:
    """Whether a workspace (or an organisation) is Parley's own."""
    return team == me.team_id or bool(me.enterprise_id and enterprise == me.enterprise_id)
