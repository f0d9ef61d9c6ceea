"""Which profile a Discord place takes its settings from: its own, its channel's or its category's.

A profile's key (`bot.profiles`) may be a channel's id or a category's: a channel without a
profile of its own takes its category's, and a thread takes its own, else its channel's, else
that channel's category's (`normalize.profile_keys`). The first that has one is the turn's
`Turn.profile`, which the dialogue manager reads its settings from; the adapter reads the same
one for what it decides itself (the mention rule, /help's account of a channel), so the two
never disagree. Only settings come from a category: every channel and thread keeps its own
conversations.

Profiles do not stack: a channel with a profile of its own (one `/config set` there makes one)
takes nothing from its category's. Looked up in memory on every message (no I/O): a channel
moved to another category takes the new category's settings at its next message.
"""

from __future__ import annotations

from adapters.discord.normalize import profile_keys
from bot.profiles import Profiles

DEFAULT_RULE = "mention"  # without profiles: a message is for Parley when it mentions it


class PlaceProfiles:
    """The profile of a place, by its discord.py channel (a thread, a guild channel or a DM). With
    no `profiles` (an adapter built without run-time profiles), none has one."""

    def __init__(self, profiles: Profiles | None) -> None:
        self._profiles = profiles

    def key(self, tenant: str, channel: object) -> str:
        """`Turn.profile`: the most specific key of `channel` that has a profile; "" when none has
        (the tenant's settings apply)."""
        if self._profiles is None:
            return ""
        return self._profiles.first_profile(tenant, profile_keys(channel))

    def mention_rule(self, tenant: str, channel: object) -> str:
        """Which messages there are for Parley (`TenantConfig.mention_rule`): mention, always, threads."""
        if self._profiles is None:
            return DEFAULT_RULE
        return self._profiles.profile(tenant, self.key(tenant, channel)).mention_rule
