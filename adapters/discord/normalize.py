"""Discord events as Parley sees them: pure functions from discord.py objects to `Turn`s.

Nothing here does I/O. Where a decision needs to know something stored (which
conversation a replied-to message belongs to), the caller looks it up and passes
the answer in.

How a Discord conversation is named (`Turn.key`):

- tenant is the guild id, or "dm", so two guilds never share context;
- in a thread, channel is the thread's parent channel and thread the thread's id
  (a thread is one conversation; a thread opened from a message has that
  message's id, so a conversation keeps its name when Parley opens a thread for it);
- in a channel, thread is the id of the message that started the reply chain;
- a DM channel is one conversation: channel and thread are its id;
- a slash command outside a thread or DM belongs to the channel's own
  conversation (thread ""), so `/ask` follow-ups and `/reset` there agree.

Where a turn's settings come from is another matter (`profile_keys`, `Turn.profile`): a thread's
own profile, else its channel's, else the channel's category's. A category shares its settings,
never its conversations.

A write action's Confirm / Cancel buttons (`bot.reply.Choices`) carry everything a press
needs in their custom id, `parley:choice:<confirm|cancel>:<call>:<thread>`, so a press is
understood on any replica and after a restart (no view kept in memory). The thread is the
conversation's, as the offering turn named it: in a channel's reply chain nothing else says
which conversation the buttons belong to. `choice_turn` makes a press a `choice` turn of
that conversation.

The buttons under every final answer (👍, 👎, "Talk to a person", "Regenerate") are persistent
too: `parley:answer:<up|down|person|again>:<answered turn's event id>:<thread>:<asker>`
(`AnswerPress`), at most 83 characters. `answer_press_turn` makes a press a turn of the
answer's conversation, as `choice_turn` does for Confirm / Cancel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import discord

from bot.config import DiscordSettings
from bot.turns import CHOICE, CHOICES, ConversationKey, Turn

PLATFORM = "discord"
DM_TENANT = "dm"
COMMANDS = ("ask", "translate", "reset", "help")
# Ordinary user messages; joins, pins, boosts and the like are not questions.
USER_MESSAGE_TYPES = (discord.MessageType.default, discord.MessageType.reply)
THREAD_NAME_LIMIT = 100
# A user or role mention, `<@123>`, `<@!123>` or `<@&123>`; `strip_mention` removes Parley's own.
_MENTION = re.compile(r"<@[!&]?(\d++)>")
# Confirm / Cancel of a write action: the custom id of each button (at most 100 characters).
CHOICE_PREFIX = "parley:choice:"
_CHOICE_ID = re.compile(r"parley:choice:(confirm|cancel):([0-9a-f]{16}):([0-9]{0,20})")
# The buttons under an answer (`AnswerPress`); discord.py's `DynamicItem` dispatches by this template.
ANSWER_TEMPLATE = (
    r"parley:answer:(?P<kind>up|down|person|again):"
    r"(?P<answer>[0-9]{1,20}):(?P<thread>[0-9]{0,20}):(?P<asker>[0-9]{1,20})"
)
ANSWER_KINDS = ("up", "down", "person", "again")
# `Turn.handle` of a press: what answering it and settling its buttons need (the press's own
# interaction token, valid 15 minutes, edits the pressed message and posts follow-ups).
PRESS_TOKEN, PRESSED_MESSAGE = "press_token", "pressed_message"


@dataclass(frozen=True, slots=True)
class Place:
    """Where a message or interaction happened, as Parley names it."""

    tenant: str
    channel: str
    thread_id: str | None  # the thread's id when it happened in a thread
    dm: bool

    def allowed(self, settings: DiscordSettings, *, guild_id: int | None, channel_ids: tuple[int, ...]) -> bool:
        if self.dm:
            return settings.dms_allowed
        if settings.allowed_guilds and guild_id not in settings.allowed_guilds:
            return False
        return not settings.allowed_channels or any(c in settings.allowed_channels for c in channel_ids)


def tenant_of(guild_id: int | None) -> str:
    return str(guild_id) if guild_id is not None else DM_TENANT


def guild_id_of(message: discord.Message) -> int | None:
    if message.guild is not None:
        return message.guild.id
    # A guild not (yet) in the cache still names itself on the channel.
    return getattr(message.channel, "guild_id", None)


def place_of(channel: object, guild_id: int | None) -> Place:
    channel_id = str(getattr(channel, "id", ""))
    if guild_id is None:
        return Place(DM_TENANT, channel_id, None, dm=True)
    if isinstance(channel, discord.Thread):
        return Place(tenant_of(guild_id), str(channel.parent_id), channel_id, dm=False)
    return Place(tenant_of(guild_id), channel_id, None, dm=False)


def category_of(channel: object) -> str | None:
    """The id of the category a guild channel is in, or a thread's channel is in (None when it is
    in none, or discord.py's cache does not have the thread's channel)."""
    if isinstance(channel, discord.Thread):
        channel = channel.parent
    category = getattr(channel, "category_id", None)
    return str(category) if category is not None else None


def profile_keys(channel: object) -> tuple[str, ...]:
    """The keys a place's settings may come from, most specific first: a thread's own id, its
    channel's, that channel's category's; a channel's, then its category's; a DM's channel."""
    keys = [str(getattr(channel, "id", ""))]
    if isinstance(channel, discord.Thread) and channel.parent_id is not None:
        keys.append(str(channel.parent_id))
    category = category_of(channel)
    if category is not None:
        keys.append(category)
    return tuple(key for key in keys if key)


def channel_ids(channel: object) -> tuple[int, ...]:
    """The channel and, for a thread, its parent: either may be in `allowed_channels`."""
    ids = [getattr(channel, "id", 0)]
    if isinstance(channel, discord.Thread) and channel.parent_id is not None:
        ids.append(channel.parent_id)
    return tuple(ids)


def is_from_bot(message: discord.Message) -> bool:
    """Parley's own messages and every other bot's (and webhooks') are never answered."""
    return message.author.bot or message.webhook_id is not None or message.type not in USER_MESSAGE_TYPES


def mentions_bot(message: discord.Message, *, bot_id: int, bot_role_ids: frozenset[int] = frozenset()) -> bool:
    """Addressed to Parley: a user mention, or a mention of the role Discord made for the bot."""
    if any(user.id == bot_id for user in message.mentions):
        return True
    return bool(bot_role_ids.intersection(message.raw_role_mentions))


def strip_mention(text: str, *, bot_id: int, bot_role_ids: frozenset[int] = frozenset()) -> str:
    ids = {str(i) for i in (bot_id, *bot_role_ids)}
    return _MENTION.sub(lambda m: "" if m[1] in ids else m[0], text).strip()


def forum_post(message: discord.Message) -> bool:
    """The opening message of a new post in a forum channel: a question for Parley, mention or
    not (a post's first message has the post's id)."""
    channel = message.channel
    return (
        isinstance(channel, discord.Thread)
        and message.id == channel.id
        and isinstance(channel.parent, discord.ForumChannel)
    )


def replied_to(message: discord.Message) -> int | None:
    ref = message.reference
    if ref is None or ref.message_id is None:
        return None
    return ref.message_id


def chain_root_guess(message: discord.Message, *, bot_id: int) -> str | None:
    """The conversation a reply continues when nothing was stored for the replied-to
    message (store lost or expired): if it is Parley's, the message that answer
    replied to, else None (a reply to someone else's message is not for Parley)."""
    resolved = message.reference.resolved if message.reference else None
    if not isinstance(resolved, discord.Message) or resolved.author.id != bot_id:
        return None
    parent = replied_to(resolved)
    return str(parent if parent is not None else resolved.id)


def message_turn(
    message: discord.Message,
    *,
    bot_id: int,
    bot_role_ids: frozenset[int] = frozenset(),
    conversation: str | None,
    open_thread: bool = False,
    profile: str = "",
) -> Turn:
    """The turn for a message Parley answers. `conversation` is the known conversation
    it continues (a reply chain's root) or None for a new one, which the message starts.
    With `open_thread`, a new conversation in a channel is answered in a new thread. `profile`:
    the key its settings come from (`profile_keys`, the first with a profile)."""
    place = place_of(message.channel, guild_id_of(message))
    handle: dict[str, str] = {}
    if place.dm:
        thread, reply_to = place.channel, None  # the DM is the conversation; no need to quote
    elif place.thread_id is not None:
        thread, reply_to = place.thread_id, str(message.id)
    elif conversation is not None:
        thread, reply_to = conversation, str(message.id)
    else:
        thread, reply_to = str(message.id), str(message.id)
        if open_thread:
            handle["open_thread"] = "1"
    return Turn(
        platform=PLATFORM,
        tenant=place.tenant,
        channel=place.channel,
        thread=thread,
        user=str(message.author.id),
        text=strip_mention(message.content, bot_id=bot_id, bot_role_ids=bot_role_ids),
        event_id=str(message.id),
        at=message.created_at.timestamp(),
        reply_to=reply_to,
        address={"post_channel": str(message.channel.id)},  # the thread itself, when in one
        handle=handle,
        profile=profile,
    )


def interaction_turn(
    interaction: discord.Interaction,
    *,
    command: str,
    text: str = "",
    target_language: str | None = None,
    original_message_id: int | None = None,
    profile: str = "",
) -> Turn:
    """The turn for a slash command. `handle` carries what this answer needs — the
    application id and the interaction token (valid 15 minutes), never the bot token;
    `/translate`'s `to:` becomes `Turn.target_language`, as the user typed it."""
    place = place_of(interaction.channel, interaction.guild_id)
    thread = place.channel if place.dm else (place.thread_id or "")
    handle = {
        "application_id": str(interaction.application_id),
        "interaction_token": interaction.token,
        # The deferred response is the first message of the answer; "@original" names it
        # when Discord did not say its id.
        "original": str(original_message_id) if original_message_id else "@original",
    }
    return Turn(
        platform=PLATFORM,
        tenant=place.tenant,
        channel=place.channel,
        thread=thread,
        user=str(interaction.user.id),
        text=text,
        event_id=str(interaction.id),
        at=interaction.created_at.timestamp(),
        command=command,
        address={"post_channel": str(interaction.channel_id)},
        handle=handle,
        target_language=(target_language or "").strip(),
        profile=profile,
    )


def conversation_link(key: ConversationKey) -> str | None:
    """A link that opens a Discord conversation (its thread or first message, when it has one),
    for a ticket's header."""
    if key.tenant == DM_TENANT:
        return f"https://discord.com/channels/@me/{key.channel}"
    return f"https://discord.com/channels/{key.tenant}/{key.channel}" + (f"/{key.thread}" if key.thread else "")


def thread_name(text: str) -> str:
    """A thread's title from the question that opened it: its first line, shortened."""
    first = " ".join(text.split("\n", 1)[0].split())
    if len(first) > THREAD_NAME_LIMIT:
        first = first[: THREAD_NAME_LIMIT - 1].rstrip() + "…"
    return first or "Parley"


# -- Confirm / Cancel of a write action (bot.reply.Choices) --------------------------------------


@dataclass(frozen=True, slots=True)
class Press:
    """What a Confirm or Cancel button's custom id says."""

    choice: str  # "confirm" or "cancel" (`bot.turns.CHOICES`)
    call: str  # the pending call's id
    thread: str  # the thread of the conversation the buttons were offered in ("" for a channel's own)


def choice_id(choice: str, call: str, thread: str) -> str:
    """A button's custom id; `parse_choice` reads it back."""
    assert choice in CHOICES
    return f"{CHOICE_PREFIX}{choice}:{call}:{thread}"


def custom_id_of(interaction: discord.Interaction) -> str:
    """The custom id of the component pressed ("" when Discord sent none)."""
    data: dict[str, object] = dict(interaction.data or {})
    return str(data.get("custom_id") or "")


def parse_choice(custom_id: str) -> Press | None:
    """The press a custom id Parley made stands for, or None when it is not one."""
    match = _CHOICE_ID.fullmatch(custom_id)
    if match is None:
        return None
    return Press(match[1], match[2], match[3])


def choice_turn(interaction: discord.Interaction, press: Press, *, profile: str = "") -> Turn | None:
    """The `choice` turn of a button pressed, in the conversation the buttons were offered in:
    the place of the pressed message (guild, channel, thread or DM) and the conversation's
    thread from the custom id. None when the two disagree (in a thread or DM the place alone
    names the conversation) or Discord did not say where or what was pressed."""
    place = place_of(interaction.channel, interaction.guild_id)
    message = interaction.message
    if message is None or not place.channel:
        return None
    named = place.channel if place.dm else place.thread_id
    if named is not None and press.thread != named:
        return None
    user = str(interaction.user.id)
    return Turn(
        platform=PLATFORM,
        tenant=place.tenant,
        channel=place.channel,
        thread=press.thread,
        user=user,
        text=press.choice,
        event_id=str(interaction.id),  # one per press; Discord never sends an interaction twice
        at=interaction.created_at.timestamp(),
        command=CHOICE,
        reply_to=press.call,
        address={"post_channel": str(interaction.channel_id)},
        handle={
            "application_id": str(interaction.application_id),
            PRESS_TOKEN: interaction.token,
            PRESSED_MESSAGE: str(message.id),
        },
        profile=profile,
    )


# -- the buttons under an answer -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnswerPress:
    """What a button under an answer says: which button, the answered turn's event id (what a
    vote is on), the conversation's thread (as the answered turn named it) and who asked."""

    kind: str  # `ANSWER_KINDS`: a vote, a request for a person, or the question asked again
    answer: str
    thread: str
    asker: str

    @property
    def custom_id(self) -> str:
        assert self.kind in ANSWER_KINDS
        return f"parley:answer:{self.kind}:{self.answer}:{self.thread}:{self.asker}"


def parse_answer_press(custom_id: str) -> AnswerPress | None:
    match = re.fullmatch(ANSWER_TEMPLATE, custom_id)
    return AnswerPress(match["kind"], match["answer"], match["thread"], match["asker"]) if match else None


def answer_press_turn(
    interaction: discord.Interaction,
    press: AnswerPress,
    *,
    text: str,
    command: str | None,
    reply_to: str | None = None,
    handle: dict[str, str] | None = None,
    target_language: str = "",
    profile: str = "",
    regenerates: str = "",
) -> Turn | None:
    """The turn a press of a button under an answer makes, in the answer's conversation; None
    when the press's place disagrees with the thread the button names (a thread or DM names
    its conversation itself), or Discord did not say where it was pressed."""
    place = place_of(interaction.channel, interaction.guild_id)
    named = place.channel if place.dm else place.thread_id
    if interaction.message is None or not place.channel or (named is not None and press.thread != named):
        return None
    return Turn(
        platform=PLATFORM,
        tenant=place.tenant,
        channel=place.channel,
        thread=press.thread,
        user=str(interaction.user.id),
        text=text,
        event_id=str(interaction.id),  # one per press: a vote changed back and forth counts each time
        at=interaction.created_at.timestamp(),
        command=command,
        reply_to=reply_to,
        address={"post_channel": str(interaction.channel_id)},
        handle=handle or {},
        target_language=target_language,
        profile=profile,
        regenerates=regenerates,
    )
