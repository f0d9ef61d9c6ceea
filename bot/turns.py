"""Platform-neutral, immutable types for what travels through Parley: turns and replies."""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.errors import InputRejected


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """Names one conversation. `tenant` is the Slack team, Discord guild or web site, so two
    workspaces never share a conversation; `thread` is empty where the platform has none."""

    platform: str
    tenant: str
    channel: str
    thread: str = ""

    def __str__(self) -> str:
        return f"{self.platform}:{self.tenant}:{self.channel}:{self.thread}"

    @property
    def hash_tag(self) -> str:
        """`{...}` so that every key of one conversation lands in one Redis Cluster slot."""
        return "{" + str(self).replace("{", "(").replace("}", ")") + "}"


# Commands only the support desk and buttons produce (`bot.handoff.flow`, `bot.feedback`,
# `bot.dialogue.confirm`); adapters must never let a customer's own text become one.
AGENT, RESOLVE, FEEDBACK, CHOICE = "agent", "resolve", "feedback", "choice"
DESK_COMMANDS = (AGENT, RESOLVE, FEEDBACK, CHOICE)
VOTES = ("up", "down")  # the text of a feedback turn
CHOICES = ("confirm", "cancel")  # the text of a choice turn: a Confirm or Cancel button pressed
# A "Talk to a person" button pressed: a request for a person as explicit as a slash command
# (routed to the handoff, never guessed from words); its text is what the customer is shown as saying.
ASK_PERSON = "handoff"


@dataclass(frozen=True, slots=True)
class Turn:
    """One user message, as an adapter hands it to the dialogue manager.

    `event_id` is the platform's id for the event (Slack `event_id`, Discord message or
    interaction id): retries of one event carry the same id. `command` is an explicit
    request from a slash command (`help`, `reset`, `ask`, `translate`), a "Talk to a person"
    button (`handoff`, `ASK_PERSON`), or from the
    support desk and feedback buttons (`agent`, `resolve`, `feedback`: see `bot.handoff.flow`;
    adapters must never let a customer's own text produce those), `reply_to` the
    platform id of the message the answer should answer. What an adapter needs to reply is
    its own business, in two string maps the core never reads: `address` says how to reach
    the conversation at any later time (a Discord thread's channel id), and a ticket keeps it;
    `handle` answers this one delivery only (a Discord interaction token lives 15 minutes, a
    Slack `response_url` answers once, a message's allowed mentions are its own), and is never
    copied anywhere. A turn from the support desk names its `desk`, `desk_thread` and the
    `agent` (the person) who wrote it. `seq` is the
    turn's place in its conversation, given by a durable inbox (0 from an in-process one);
    `uid` names this one delivery of the turn (given by the inbox: a platform retry gets
    another), which is what "already answered" is decided by. `target_language` is the
    language an explicit translate command asked for (a name or code; "" for the default).
    `profile` names the profile its settings come from when that is not its channel's (the web
    chat: the page the visitor wrote from, `Profiles.page_profile`; Discord: a thread's, its
    channel's or the channel's category's, `Profiles.first_profile`). `regenerates` is the `uid`
    of the turn whose answer this one asks for again (a Regenerate button): when that turn is
    still the conversation's last exchange, this one replaces it in the history
    (`bot.dialogue.regenerate`).
    """

    platform: str
    tenant: str
    channel: str
    user: str
    text: str
    event_id: str
    thread: str = ""
    at: float = field(default_factory=time.time)
    command: str | None = None
    reply_to: str | None = None
    address: dict[str, str] = field(default_factory=dict)
    handle: dict[str, str] = field(default_factory=dict)
    seq: int = 0
    uid: str = ""
    target_language: str = ""
    desk: str = ""
    desk_thread: str = ""
    agent: str = ""
    profile: str = ""
    regenerates: str = ""

    @classmethod
    def of(cls, key: ConversationKey, **fields: Any) -> Turn:
        """A turn of the conversation `key` that no adapter read from a user's message (a desk's
        reply, a vote on an answer)."""
        return cls(platform=key.platform, tenant=key.tenant, channel=key.channel, thread=key.thread, **fields)

    @property
    def key(self) -> ConversationKey:
        return ConversationKey(self.platform, self.tenant, self.channel, self.thread)

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.at, UTC)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Turn:
        # Fields this version does not know are dropped, so replicas of two versions share an inbox.
        if "meta" in data:  # written by a version before `address`/`handle`: a rolling upgrade
            data = {**data, **split_meta(data["meta"])}
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# The keys adapters kept in the single `meta` map before it was split, by where they belong now.
_HANDLE_KEYS = frozenset(("interaction_token", "application_id", "original", "response_url", "open_thread", "mentions"))
_DESK_KEYS = ("desk", "desk_thread", "agent")


def split_meta(meta: dict[str, str]) -> dict[str, Any]:
    """The fields of a turn or ticket written with the old `meta` map."""
    fields: dict[str, Any] = {k: meta[k] for k in _DESK_KEYS if k in meta}
    fields["handle"] = {k: v for k, v in meta.items() if k in _HANDLE_KEYS}
    fields["address"] = {k: v for k, v in meta.items() if k not in _HANDLE_KEYS and k not in _DESK_KEYS}
    return fields


def decode_text(raw: bytes) -> str:
    """Decode platform bytes without losing them: invalid UTF-8 survives as lone surrogates,
    which the dialogue manager rejects with a clear answer instead of crashing later."""
    return raw.decode("utf-8", errors="surrogateescape")


def check_size(text: str, limit: int) -> None:
    """Refuse, as `InputRejected`, a message that is empty or longer than `limit` characters
    (`bot.messages.for_user` has the words for each)."""
    if not text.strip():
        raise InputRejected("empty")
    if len(text) > limit:
        raise InputRejected("too_long", length=len(text), limit=limit)


class Outcome(enum.StrEnum):
    """How a turn ended; every turn ends in exactly one of these (and it is logged)."""

    ANSWERED = "answered"
    FAILED = "failed"  # the LLM failed; the user was told
    REJECTED = "rejected"  # bad input; the user was told why
    DUPLICATE = "duplicate"  # a platform retry of a turn already taken; nothing sent
    COMMAND = "command"  # help, reset and the like
    DEFERRED = "deferred"  # the store was down before anything was shown; the turn is tried again
    HANDED_OFF = "handed_off"  # the conversation went to a person; the user was told, the desk got the transcript
    FORWARDED = "forwarded"  # a user's message while handed off: saved and passed to the desk, not answered
    RELAYED = "relayed"  # a person's reply from the desk, delivered to the user
    RESOLVED = "resolved"  # a person handed the conversation back to the bot
    FEEDBACK = "feedback"  # a thumbs up or down on an answer, stored
    IGNORED = "ignored"  # a desk or feedback event with nothing to act on (`Reply.error` says why)
    OVER_QUOTA = "over_quota"  # refused before any engine request: a quota is used up (`Reply.error` names it)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the dialogue manager did with a turn: the text the user saw, and timings.

    `ttft` is seconds from the turn's start to the first token, `llm_time` the seconds
    spent waiting on the engine, `total` the whole turn. `total - llm_time` is Parley's
    own share, which `parley bench` reports. `intent` is where routing sent the turn,
    `route_step` which routing step decided (explicit, moot, semantic, llm, no-match, disabled),
    `moderation` the moderation categories that fired on the input.
    """

    key: ConversationKey
    event_id: str
    outcome: Outcome
    text: str = ""
    error: str = ""
    ttft: float | None = None
    llm_time: float = 0.0
    total: float = 0.0
    intent: str = ""
    route_step: str = ""
    route_time: float = 0.0
    moderation: tuple[str, ...] = ()
    prompt_tokens: int = 0  # as the engine counted them, summed over the turn's requests
    completion_tokens: int = 0
