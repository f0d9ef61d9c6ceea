"""Slack payloads -> `Turn`s: pure functions, no I/O (the wire-format third of the adapter).

Which Slack messages are Parley's to answer:

- an @mention in a channel (`app_mention`): answer in the mention's thread, and
  join that thread;
- a reply in a thread Parley has joined, without a mention (`message` with
  `thread_ts`): answer only if the caller knows Parley is in that thread
  (`Addressed.THREAD`; the thread memory lives in `adapters.slack.threads`);
- a direct message (`message` with `channel_type` "im"): one conversation per
  DM, or per thread where the user threads;
- `/parley help|reset` (a slash command);
- in an assistant-pane thread, the pane's own command `summarise` (`pane_command_of`), which
  the intake answers itself with a summary of the channel in view.

Everything else is ignored: Parley's own messages and other bots', edits,
deletions, joins and the other subtypes, and the `message` copy of a channel
message that mentions Parley (Slack sends both it and the `app_mention`, with
different event ids; answering both would answer twice).

The tenant of a turn (`tenant_of`) is the installation that answers it: the workspace, or the
Enterprise Grid organisation when Parley is installed org-wide there. An org-wide install is one
token, one install and one uninstall for every workspace of the org, so the org is one tenant:
its settings, quotas and knowledge apply in all its workspaces, and the tenant alone finds the
token of the answer (`app._client_for`). Conversation keys stay apart without the workspace: Grid
channel ids are unique across the org. A workspace installed on its own (Grid or not) stays its
own tenant, as before.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from adapters.slack import mrkdwn
from bot import messages
from bot.messages import ASK_FOR_PERSON
from bot.turns import ASK_PERSON, CHOICE, ConversationKey, Turn

PLATFORM = "slack"
MENTIONS = "mentions"  # the `Turn.handle` key of the mentions the answer may repeat (see `mrkdwn`)
COMMANDS = ("help", "reset")
# Subtypes that are still a person writing to Parley; every other one (message_changed,
# message_deleted, channel_join, bot_message, ...) is an event about a message, not one.
USER_SUBTYPES = (None, "file_share", "thread_broadcast")
# `<@U123>` or `<@U123|name>`: how Slack writes a user mention in message text.
# (Slack escapes "<" in text, so a label holds none: "<@U1|<@U1|…" is read once, not from each
# "<@" to the end, which was quadratic.)
_USER_MENTION = re.compile(r"<@([UW][A-Z0-9]++)(?:\|[^<>]*+)?>")
_SPACES = re.compile(r"[ \t]{2,}")


class Addressed(enum.StrEnum):
    """How a message reached Parley, which decides whether it is Parley's to answer."""

    MENTION = "mention"  # @Parley in a channel: answer, and follow the thread from now on
    DIRECT = "direct"  # a DM: always answer
    THREAD = "thread"  # a thread reply without a mention: answer only if Parley is in the thread


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message that may be Parley's to answer. `no_text` marks a file sent without words."""

    route: Addressed
    turn: Turn
    no_text: bool = False


@dataclass(frozen=True, slots=True)
class Identity:
    """Who Parley is in the workspace, from `auth.test` at start-up."""

    user_id: str
    bot_id: str
    team_id: str
    enterprise_id: str = ""  # the Enterprise Grid organisation, when the workspace is in one


def mentions(text: str, user_id: str) -> bool:
    return any(m.group(1) == user_id for m in _USER_MENTION.finditer(text))


def clean_text(text: str, bot_user_id: str) -> str:
    """The text as the model should read it: Parley's own mention removed, other people's
    mentions kept (as `<@U…>`, which Slack shows as a name if the answer repeats it), and
    Slack's three HTML escapes undone."""

    def keep_others(m: re.Match[str]) -> str:
        return "" if m.group(1) == bot_user_id else f"<@{m.group(1)}>"

    text = _USER_MENTION.sub(keep_others, text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return _SPACES.sub(" ", text).strip()


def command_of(text: str) -> str | None:
    word = text.strip().lower()
    return word if word in COMMANDS else None


def is_dm(channel: str, channel_type: str | None = None) -> bool:
    return channel_type == "im" or (channel_type is None and channel.startswith("D"))


def tenant_of(body: dict[str, Any], team: str) -> str:
    """The tenant of a payload (events, slash commands, interactivity): its Grid org's id when
    Slack says it came for an org-wide install, else `team`, the workspace it names. Read as bolt
    reads it for authorisation (`authorizations[0]` first), so the turn's tenant and the token that
    authorised the event are the same installation's."""
    authorizations = body.get("authorizations")
    source = authorizations[0] if isinstance(authorizations, list) and authorizations else body
    org_wide = source.get("is_enterprise_install") if isinstance(source, dict) else None
    if org_wide is not True and org_wide != "true":  # slash commands send it as a string
        return team
    enterprise = body.get("enterprise")
    if isinstance(enterprise, dict):
        enterprise = enterprise.get("id")
    org = enterprise or (source.get("enterprise_id") if isinstance(source, dict) else None) or body.get("enterprise_id")
    return org if isinstance(org, str) and org else team


def from_event(
    body: dict[str, Any], me: Identity, *, answers_all: Callable[[str, str], bool] = lambda tenant, channel: False
) -> Incoming | None:
    """The `Incoming` for an Events API callback (or a Socket Mode `events_api` payload), or
    None when Parley must not answer it. `answers_all(tenant, channel)`: the channel's profile
    has Parley answer every message there (mention rule "always"), not only those addressed to it."""
    event = body.get("event") or {}
    kind = event.get("type")
    if kind not in ("app_mention", "message") or _not_a_person(event, me):
        return None
    channel = event.get("channel", "")
    ts = event.get("ts", "")
    thread_ts = event.get("thread_ts") or ""
    raw = event.get("text") or ""
    tenant = tenant_of(body, body.get("team_id") or event.get("team") or me.team_id)
    if kind == "app_mention":
        if is_dm(channel):
            return None  # a DM arrives as a `message` event too; that one is answered
        route, thread = Addressed.MENTION, thread_ts or ts
    elif is_dm(channel, event.get("channel_type")):
        route, thread = Addressed.DIRECT, thread_ts
    elif mentions(raw, me.user_id):
        return None  # the `app_mention` event for this same message is answered
    elif answers_all(tenant, channel):
        route, thread = Addressed.MENTION, thread_ts or ts  # answered as if mentioned, in its thread
    elif thread_ts and thread_ts != ts:
        route, thread = Addressed.THREAD, thread_ts
    else:
        return None  # a channel message not addressed to Parley
    text = clean_text(raw, me.user_id)
    user = event.get("user", "")
    turn = Turn(
        platform=PLATFORM,
        tenant=tenant,
        channel=channel,
        thread=thread,
        user=user,
        text=text,
        event_id=body.get("event_id") or f"{channel}:{ts}",
        at=_seconds(event.get("event_ts") or ts),
        command=command_of(text),
        reply_to=ts,
        # The user's own workspace, which native streaming names (a Slack Connect guest's is another).
        address={"user_team": event.get("user_team") or event.get("team") or tenant},
        # The people and channels the user mentioned: the only mentions this answer may make live.
        handle={MENTIONS: mrkdwn.encode_ids(mrkdwn.mentions_in(raw))},
    )
    no_text = not text and bool(event.get("files") or event.get("attachments"))
    return Incoming(route, turn, no_text=no_text)


def from_command(body: dict[str, Any]) -> Turn:
    """The `Turn` for `/parley ...`: `reset` forgets the conversation of the channel (a DM's
    conversation; in a channel thread, `@Parley reset` resets that thread), anything else
    asks for help. The answer goes back through the command's `response_url`."""
    channel = body.get("channel_id", "")
    return Turn(
        platform=PLATFORM,
        tenant=tenant_of(body, body.get("team_id", "")),
        channel=channel,
        user=body.get("user_id", ""),
        text=(body.get("text") or "").strip(),
        # Slash commands are never retried by Slack; the trigger id is unique per invocation.
        event_id="command:" + (body.get("trigger_id") or f"{channel}:{body.get('user_id', '')}"),
        command="reset" if command_of(body.get("text") or "") == "reset" else "help",
        handle={"response_url": body.get("response_url", "")},
    )


def _not_a_person(event: dict[str, Any], me: Identity) -> bool:
    return (
        event.get("subtype") not in USER_SUBTYPES
        or bool(event.get("bot_id") or event.get("bot_profile"))
        or not event.get("user")
        or event.get("user") == me.user_id
    )


def _seconds(ts: str) -> float:
    try:
        return float(ts)
    except (TypeError, ValueError):
        return time.time()


# -- the support desk and feedback (see adapters.slack.desk, bot.handoff.flow) ---------------------------

RESOLVE_ACTION = "parley_resolve"  # the action id of the Resolve button on a ticket
# What a person types in a ticket thread to hand the conversation back. `/parley resolve` is
# here as typed text: sent as a real slash command it carries no thread, so it cannot say
# which ticket it means (`from_command` answers it with how to do it instead).
RESOLVE_WORDS = ("resolve", "!resolve", "/resolve", "/parley resolve", "parley resolve")
# Reactions that are votes; Slack names them with aliases and skin tones ("+1::skin-tone-3").
VOTE_REACTIONS = {"+1": "up", "thumbsup": "up", "-1": "down", "thumbsdown": "down"}


def desk_thread(channel: str, thread_ts: str) -> str:
    """The id a ticket thread has in `bot.handoff.flow` (a ts is only unique within its channel)."""
    return f"{channel}:{thread_ts}"


def conversation_link(key: ConversationKey) -> str | None:
    """A link that opens a Slack conversation (its thread, when it has one), for a ticket's header."""
    base = f"https://app.slack.com/client/{key.tenant}/{key.channel}"
    return f"{base}/thread/{key.channel}-{key.thread}" if key.thread else base


@dataclass(frozen=True, slots=True)
class DeskMessage:
    """A person's message (or Resolve) in a thread of the support channel. `mention` marks the
    `app_mention` copy of a message, which the caller drops (its `message` twin is taken)."""

    thread: str  # desk_thread(channel, thread_ts)
    user: str
    text: str
    event_id: str
    command: str  # agent | resolve
    mention: bool = False
    team: str = ""  # the workspace the person belongs to, as the event says (a Slack Connect guest's is another)


def desk_message(body: dict[str, Any], me: Identity, support_channel: str) -> DeskMessage | None:
    """A thread reply in the support channel from a person, or None (not in a thread of that
    channel, or a bot, an edit, a join...)."""
    event = body.get("event") or {}
    if event.get("type") not in ("message", "app_mention") or event.get("channel") != support_channel:
        return None
    thread_ts = event.get("thread_ts") or ""
    if not thread_ts or thread_ts == event.get("ts") or _not_a_person(event, me):
        return None
    text = clean_text(event.get("text") or "", me.user_id)
    return DeskMessage(
        thread=desk_thread(support_channel, thread_ts),
        user=event.get("user", ""),
        text=text,
        event_id=body.get("event_id") or f"{support_channel}:{event.get('ts', '')}",
        command="resolve" if text.lower().strip().rstrip(".!") in RESOLVE_WORDS else "agent",
        mention=event.get("type") == "app_mention",
        team=event.get("user_team") or event.get("team") or "",
    )


def resolve_action(body: dict[str, Any]) -> DeskMessage | None:
    """A press of a ticket's Resolve button (a `block_actions` payload), or None."""
    container = body.get("container") or {}
    channel = container.get("channel_id") or (body.get("channel") or {}).get("id", "")
    ts = container.get("message_ts") or (body.get("message") or {}).get("ts", "")
    user = (body.get("user") or {}).get("id", "")
    if body.get("type") != "block_actions" or not (channel and ts and user):
        return None
    if not any(a.get("action_id") == RESOLVE_ACTION for a in body.get("actions") or []):
        return None
    # Interactivity payloads are never retried by Slack; the trigger id is unique per press.
    event_id = "action:" + (body.get("trigger_id") or f"{channel}:{ts}:{user}")
    team = (body.get("user") or {}).get("team_id", "")
    return DeskMessage(desk_thread(channel, ts), user, "", event_id, "resolve", team=team)


@dataclass(frozen=True, slots=True)
class Vote:
    """A 👍/👎 on one of Parley's messages: a reaction, or a press of its feedback buttons."""

    team: str
    message: str  # desk_thread-style "{channel}:{ts}": a ts is unique within its channel only
    user: str
    vote: str  # up | down
    event_id: str
    via: str = "reaction"  # reaction | button


def vote_of(body: dict[str, Any], me: Identity) -> Vote | None:
    """The vote in a `reaction_added` event on a message of Parley's, or None."""
    event = body.get("event") or {}
    item = event.get("item") or {}
    if event.get("type") != "reaction_added" or item.get("type") != "message":
        return None
    vote = VOTE_REACTIONS.get((event.get("reaction") or "").split("::")[0])
    user = event.get("user", "")
    if vote is None or not user or user == me.user_id:
        return None
    if event.get("item_user") not in (None, me.user_id):
        return None  # someone else's message
    return Vote(
        team=tenant_of(body, body.get("team_id") or me.team_id),
        message=desk_thread(item.get("channel", ""), item.get("ts", "")),
        user=user,
        vote=vote,
        event_id=body.get("event_id") or f"reaction:{item.get('channel')}:{item.get('ts')}:{user}:{vote}",
    )


# The feedback buttons under every answer (`sink.feedback_block`): the element's action id, and
# each button's value, which is the vote it casts.
FEEDBACK_ACTION = "parley_feedback"
FEEDBACK_VALUES = ("up", "down")


def _pressed(body: dict[str, Any], action_ids: Collection[str]) -> tuple[dict[str, Any], str, str, str] | None:
    """A `block_actions` press of one of `action_ids`: the action, and the channel, message ts and
    user it came from; None when the payload is not one or lacks any of them."""
    action = next((a for a in body.get("actions") or [] if a.get("action_id") in action_ids), None)
    container = body.get("container") or {}
    channel = container.get("channel_id") or (body.get("channel") or {}).get("id", "")
    ts = container.get("message_ts") or (body.get("message") or {}).get("ts", "")
    user = (body.get("user") or {}).get("id", "")
    if body.get("type") != "block_actions" or action is None or not (channel and ts and user):
        return None
    return action, channel, ts, user


def feedback_of(body: dict[str, Any], me: Identity) -> Vote | None:
    """The vote in a press of an answer's feedback buttons (a `block_actions` payload), or None
    when the payload is not one or carries a value Parley never put on a button. Whose answer it
    is, and whether it is one, is the answer index's to say, as for a reaction."""
    if (pressed := _pressed(body, (FEEDBACK_ACTION,))) is None:
        return None
    action, channel, ts, user = pressed
    vote = action.get("value")
    if vote not in FEEDBACK_VALUES:
        return None
    team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or me.team_id
    team = tenant_of(body, team)
    return Vote(
        team=team,
        message=desk_thread(channel, ts),
        user=user,
        vote=vote,
        # Interactivity payloads are never retried by Slack; the trigger id is unique per press.
        event_id="feedback:" + (body.get("trigger_id") or f"{channel}:{ts}:{user}:{action.get('action_ts', '')}"),
        via="button",
    )


# -- the assistant pane (see adapters.slack.assistant) -------------------------------------------

PANE = "pane"  # `Turn.handle`: "1" for a question in an assistant-pane thread
TITLE = "title"  # `Turn.handle`: the thread's first question, which becomes its title
TITLE_CHARS = 80  # of the first question in the title (Slack cuts a long title itself)
# The pane's own command: a summary of the channel the user is looking at (`summaries`). Typed,
# or sent by pressing the suggested prompt the pane offers beside a channel.
SUMMARISE = "summarise"
SUMMARISE_WORDS = frozenset(
    {"summarise", "summarize", "summarize this channel", messages.ASSISTANT_SUMMARISE_PROMPT.lower().rstrip(".!")}
)


def pane_command_of(text: str) -> str | None:
    """`SUMMARISE` when a message in an assistant-pane thread is the pane's command, else None
    (a question). Case, spacing and a final full stop or "!" do not matter."""
    words = " ".join(text.lower().split()).rstrip(".!")
    return SUMMARISE if words in SUMMARISE_WORDS else None


@dataclass(frozen=True, slots=True)
class PaneThread:
    """An assistant-pane thread, from an `assistant_thread_*` event."""

    tenant: str
    channel: str  # the DM between the user and Parley
    thread_ts: str
    user: str
    viewing: str  # the channel the user is looking at ("" when none)

    @property
    def key(self) -> ConversationKey:
        return ConversationKey(PLATFORM, self.tenant, self.channel, self.thread_ts)


def pane_thread(body: dict[str, Any], team_id: str) -> PaneThread | None:
    """The thread of an `assistant_thread_started` / `_context_changed` event, or None when the
    payload lacks one."""
    thread = (body.get("event") or {}).get("assistant_thread") or {}
    context = thread.get("context") or {}
    channel, thread_ts = thread.get("channel_id") or "", thread.get("thread_ts") or ""
    if not (isinstance(channel, str) and isinstance(thread_ts, str) and channel and thread_ts):
        return None
    viewing = context.get("channel_id") if isinstance(context, dict) else None
    return PaneThread(
        tenant=tenant_of(body, body.get("team_id") or team_id),
        channel=channel,
        thread_ts=thread_ts,
        user=str(thread.get("user_id") or ""),
        viewing=viewing if isinstance(viewing, str) else "",
    )


# -- Confirm / Cancel of a write action (bot.reply.Choices) --------------------------------------

# The action ids of the two buttons, and what each press means (`Turn.text` of a choice turn).
CHOICE_ACTIONS = {"parley_confirm": "confirm", "parley_cancel": "cancel"}
CHOICE_BLOCK = "parley_choice"
OFFER_TS = "offer_ts"  # the `Turn.handle` key of the message whose buttons were pressed
_CALL_ID = re.compile(r"[0-9a-f]{16}")
_THREAD_TS = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,10})?")


def choice_value(call: str, thread: str) -> str:
    """A button's value: the pending call and the thread of its conversation (the button may sit
    at a DM's top level, where the message's own thread says nothing of the conversation)."""
    return f"{call}:{thread}"


def choice_of(body: dict[str, Any], me: Identity) -> Turn | None:
    """The `choice` turn for a press of a Confirm or Cancel button (a `block_actions` payload),
    or None when the payload is not one or its value is not one Parley made."""
    if (pressed := _pressed(body, CHOICE_ACTIONS)) is None:
        return None
    action, channel, ts, user = pressed
    call, _, thread = str(action.get("value") or "").partition(":")
    if not _CALL_ID.fullmatch(call) or (thread and not _THREAD_TS.fullmatch(thread)):
        return None
    tenant = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or me.team_id
    tenant = tenant_of(body, tenant)
    return Turn(
        platform=PLATFORM,
        tenant=tenant,
        channel=channel,
        thread=thread,
        user=user,
        text=CHOICE_ACTIONS[action["action_id"]],
        # Interactivity payloads are never retried by Slack; the trigger id is unique per press.
        event_id="choice:" + (body.get("trigger_id") or f"{channel}:{ts}:{user}:{action.get('action_ts', '')}"),
        command=CHOICE,
        reply_to=call,
        handle={OFFER_TS: ts},
    )


# "Talk to a person" under answers (`sink.person_block`): its value is the conversation's thread.
PERSON_ACTION = "parley_person"
PERSON_BLOCK = "parley_person"


def person_of(body: dict[str, Any], me: Identity) -> Turn | None:
    """The `handoff` turn of a press of "Talk to a person" (a `block_actions` payload): the
    presser asks for a person in the answer's conversation, as the web chat's button does. None
    when the payload is not one or its value is no thread Parley put there."""
    if (pressed := _pressed(body, (PERSON_ACTION,))) is None:
        return None
    action, channel, ts, user = pressed
    thread = str(action.get("value") or "")
    if thread and not _THREAD_TS.fullmatch(thread):
        return None
    tenant = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or me.team_id
    return Turn(
        platform=PLATFORM,
        tenant=tenant_of(body, tenant),
        channel=channel,
        thread=thread,
        user=user,
        text=ASK_FOR_PERSON,
        # Interactivity payloads are never retried by Slack; the trigger id is unique per press.
        event_id="person:" + (body.get("trigger_id") or f"{channel}:{ts}:{user}:{action.get('action_ts', '')}"),
        command=ASK_PERSON,
    )
