"""The web chat's wire format: browser frames -> `Turn`s, and the frames Parley sends back.
Pure functions, no I/O (the wire-format third of the adapter).

Every frame is one JSON object with a `type`. The browser sends:

    {"type": "hello", "token": "v1..." | null}            first, once: who the visitor is
    {"type": "message", "id": "<client id>", "text": "...", "page"?: "/path"}  a user message
    {"type": "feedback", "answer": "<answer id>", "vote": "up" | "down", "id"?: "<client id>"}
    {"type": "choice", "call": "<call id>", "choice": "confirm" | "cancel", "id": "<client id>"}
    {"type": "handoff", "id": "<client id>"}              "Talk to a person" pressed

Parley sends:

    {"type": "welcome", "token", "resumed", "history": [{"role", "text"}], "person": bool}
    {"type": "ack", "id", "answer", "text"}     the message is in; `answer` ids its answer
    {"type": "delta", "id", "at", "text"}      a piece of answer `id`, starting at character `at`
    {"type": "done", "id", "text"}             answer `id` is complete; `text` is all of it
    {"type": "message", "id", "reply_to", "text"}  a complete message (notice, error, a human agent)
    {"type": "voted", "answer", "vote"}
    {"type": "choice", "call", "what", "expires", "reply_to"}  Confirm / Cancel for a write action
    {"type": "settled", "call", "outcome"}     the call is decided: "confirmed", "cancelled" or "expired"
    {"type": "error", "code", "text", "id"?, "retry_after"?}

`person` in the welcome says whether a person can be asked for here (a support desk is set up
and takes requests): only then does the widget show "Talk to a person". Pressed, it is a message
of its own (`Say` with the `handoff` command and the words of `bot.messages.ASK_FOR_PERSON`),
acknowledged and answered like any other, which the dialogue manager routes to the handoff.

`page` is the path of the page the visitor wrote from (the widget sends `location.pathname`):
its turn takes the settings of the site's profile for that page or a folder of it, if the
tenants file or `parley profile set` has one (`Profiles.page_profile`). Any visitor can open any
page of the site, so a page's profile must give nothing a public page should not.

The client id is the browser's own random id for a message: a resend after a reconnect
carries the same id, and the turn's event id is `<conversation>:<client id>`, so the dialogue
manager's dedupe answers it once. The conversation (the hash of the visitor id in the token,
`tokens.conversation_id`) is part of it so that one visitor can never claim (and so silence)
another's message ids. That event id is also the answer's id.

A write action waiting for the visitor's yes (`bot.reply.Choices`) comes as a `choice` frame
after the answer that asks (`reply_to`): `call` names the pending call (16 lowercase hex
digits), `what` says what it will do (the operator's wording with the model's arguments:
untrusted text, shown as text only), `expires` is unix time. A pressed button comes back as a
`choice` frame with its own client id: its turn (`choice_turn`) is a `command="choice"` turn
whose event id is `<conversation>:<client id>` like a message's (a resend is a duplicate, and
that id is the id of the answer to the press). Once the call is decided, every tab gets a
`settled` frame, which replaces its buttons; a bad `choice` frame gets an `error` frame with
the press's `id` (when that much could be read), so the widget can offer the buttons again.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bot.errors import ParleyError
from bot.messages import ASK_FOR_PERSON
from bot.reply import Offer, Settled
from bot.store.context import Message
from bot.turns import ASK_PERSON, CHOICE, CHOICES, VOTES, ConversationKey, Turn, check_size

PLATFORM = "web"
_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_PAGE = re.compile(r"/[!-~]{0,200}")  # a URL path as location.pathname gives it (printable ASCII)
_ANSWER_ID = re.compile(r"([A-Za-z0-9_-]{22}):([A-Za-z0-9_-]{8,64})")
_CALL_ID = re.compile(r"[0-9a-f]{16}")  # a pending call's id (`bot.actions.confirm`: 8 random bytes, hex)


class BadFrame(ParleyError):
    """A frame that breaks the protocol. `code` is sent to the browser; `id` is the message it
    was about, when that much could be read."""

    def __init__(self, code: str, detail: str, *, id: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.id = id


@dataclass(frozen=True, slots=True)
class Hello:
    token: str | None


@dataclass(frozen=True, slots=True)
class Say:
    id: str
    text: str
    command: str | None = None  # ASK_PERSON for "Talk to a person"; else a message typed
    page: str = ""  # the path of the page it was written on ("": not said)


@dataclass(frozen=True, slots=True)
class Vote:
    answer: str
    vote: str
    id: str | None = None  # the click's own id, so a resend of one click counts once


@dataclass(frozen=True, slots=True)
class Press:
    """A Confirm or Cancel button pressed: `choice` is "confirm" or "cancel" (`bot.turns.CHOICES`)."""

    call: str
    choice: str
    id: str  # the press's own id: a resend of one press counts once


ClientFrame = Hello | Say | Vote | Press


def parse_frame(raw: str) -> ClientFrame:
    """One text frame from the browser, checked for shape; `BadFrame` says what is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadFrame("not_json", "the frame is not JSON") from None
    if not isinstance(data, dict):
        raise BadFrame("not_object", "the frame is not a JSON object")
    match data.get("type"):
        case "hello":
            token = data.get("token")
            if token is not None and not isinstance(token, str):
                raise BadFrame("bad_field", "token must be a string or null")
            return Hello(token or None)
        case "message":
            id_ = data.get("id")
            if not isinstance(id_, str) or not _CLIENT_ID.fullmatch(id_):
                raise BadFrame("bad_field", "id must be 8 to 64 letters, digits, - or _")
            text = data.get("text")
            if not isinstance(text, str):
                raise BadFrame("bad_field", "text must be a string", id=id_)
            page = data.get("page", "")
            if not isinstance(page, str) or (page and not _PAGE.fullmatch(page)):
                raise BadFrame("bad_field", "page must be a path: / and up to 200 visible characters", id=id_)
            return Say(id_, text, page=page)
        case "handoff":
            id_ = data.get("id")
            if not isinstance(id_, str) or not _CLIENT_ID.fullmatch(id_):
                raise BadFrame("bad_field", "id must be 8 to 64 letters, digits, - or _")
            return Say(id_, ASK_FOR_PERSON, command=ASK_PERSON)
        case "feedback":
            answer, vote = data.get("answer"), data.get("vote")
            if not isinstance(answer, str) or not _ANSWER_ID.fullmatch(answer):
                raise BadFrame("bad_field", "answer must be an answer id")
            if vote not in VOTES:
                raise BadFrame("bad_field", "vote must be up or down")
            id_ = data.get("id")
            if id_ is not None and (not isinstance(id_, str) or not _CLIENT_ID.fullmatch(id_)):
                raise BadFrame("bad_field", "id must be 8 to 64 letters, digits, - or _")
            return Vote(answer, vote, id_)
        case "choice":
            return _press(data)
        case str() as other:
            raise BadFrame("unknown_type", f"unknown frame type {other[:40]!r}")
        case _:
            raise BadFrame("unknown_type", "the frame has no string type")


def _press(data: dict[str, Any]) -> Press:
    # The id first, so that an error about the rest can name the press it refused.
    id_ = data.get("id")
    if not isinstance(id_, str) or not _CLIENT_ID.fullmatch(id_):
        raise BadFrame("bad_field", "id must be 8 to 64 letters, digits, - or _")
    call = data.get("call")
    if not isinstance(call, str) or not _CALL_ID.fullmatch(call):
        raise BadFrame("bad_call", "call must be a call id (16 lowercase hex digits)", id=id_)
    choice = data.get("choice")
    if not isinstance(choice, str) or choice not in CHOICES:
        raise BadFrame("bad_choice", "choice must be confirm or cancel", id=id_)
    return Press(call, choice, id_)


def check_text(say: Say, limit: int) -> None:
    """Refuse, with the words `bot.messages.for_user` has for it, what no turn should carry."""
    check_size(say.text, limit)


def event_id(conversation: str, client_id: str) -> str:
    return f"{conversation}:{client_id}"


def conversation_key(conversation: str, *, site: str) -> ConversationKey:
    """The key of a visitor's conversation, as its turns carry it (`Turn.key`)."""
    return ConversationKey(PLATFORM, site, conversation)


def to_turn(say: Say, *, conversation: str, site: str, profile: str = "") -> Turn:
    """The turn for a visitor's message: one conversation per visitor (channel = user =
    `conversation`, the hash of the visitor id: never the id inside the token), with the
    settings of `profile` (its page's, if the site has one)."""
    return Turn(
        platform=PLATFORM,
        tenant=site,
        channel=conversation,
        user=conversation,
        text=say.text,
        event_id=event_id(conversation, say.id),
        command=say.command,
        profile=profile,
    )


def feedback_turn(vote: Vote, *, conversation: str, site: str) -> Turn:
    """The `feedback` turn for a 👍/👎 on one of the visitor's own answers (never another's).

    Each click is its own event: up, then down, then up again are three votes, and the
    dialogue manager's feedback keeps the last (a repeat of the same vote changes nothing
    there). A click's resend carries its id and is dropped as a duplicate; a frame without
    an id gets a fresh one."""
    match = _ANSWER_ID.fullmatch(vote.answer)
    if match is None or match.group(1) != conversation:
        raise BadFrame("bad_field", "answer is not one of this visitor's answers")
    return Turn(
        platform=PLATFORM,
        tenant=site,
        channel=conversation,
        user=conversation,
        text=vote.vote,
        event_id=f"{vote.answer}:feedback:{vote.id or secrets.token_hex(8)}",
        command="feedback",
        reply_to=vote.answer,
    )


def choice_turn(press: Press, *, conversation: str, site: str) -> Turn:
    """The `choice` turn for a Confirm or Cancel pressed by the visitor, in their conversation
    as their messages are (the core checks that the call is this visitor's own, and takes it
    once). Its event id is a message's (`event_id`), so the answer to the press is an answer
    like any other."""
    return Turn(
        platform=PLATFORM,
        tenant=site,
        channel=conversation,
        user=conversation,
        text=press.choice,
        event_id=event_id(conversation, press.id),
        command=CHOICE,
        reply_to=press.call,
    )


# -- frames Parley sends ----------------------------------------------------------------------


def encode(frame: dict[str, Any]) -> str:
    # ASCII escapes: text that is not valid Unicode (a lone surrogate) still makes a valid frame.
    return json.dumps(frame, ensure_ascii=True, separators=(",", ":"))


def history(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "text": m.content} for m in messages if m.role in ("user", "assistant")]


def welcome(token: str, *, resumed: bool, messages: Sequence[Message], person: bool) -> dict[str, Any]:
    return {"type": "welcome", "token": token, "resumed": resumed, "history": history(messages), "person": person}


def ack(say: Say, answer: str) -> dict[str, Any]:
    return {"type": "ack", "id": say.id, "answer": answer, "text": say.text}


def delta(answer: str, at: int, text: str) -> dict[str, Any]:
    return {"type": "delta", "id": answer, "at": at, "text": text}


def done(answer: str, text: str) -> dict[str, Any]:
    return {"type": "done", "id": answer, "text": text}


def message(id_: str, text: str, *, reply_to: str) -> dict[str, Any]:
    return {"type": "message", "id": id_, "reply_to": reply_to, "text": text}


def voted(vote: Vote) -> dict[str, Any]:
    return {"type": "voted", "answer": vote.answer, "vote": vote.vote}


def choice(offer: Offer, *, reply_to: str) -> dict[str, Any]:
    return {"type": "choice", "call": offer.call, "what": offer.what, "expires": offer.expires, "reply_to": reply_to}


def settled(call: str, outcome: Settled) -> dict[str, Any]:
    return {"type": "settled", "call": call, "outcome": outcome}


def error(code: str, text: str, *, id: str | None = None, retry_after: float | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "text": text}
    if id is not None:
        frame["id"] = id
    if retry_after is not None:
        frame["retry_after"] = round(retry_after, 1)
    return frame


# -- origins ----------------------------------------------------------------------------------


def normal_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def origin_allowed(origin: str | None, host: str, allowed: Sequence[str]) -> bool:
    """Whether a request that says it comes from `origin` may use the chat served at `host`.

    No Origin header: not a browser (browsers always send one with a WebSocket or a CORS
    request), and a non-browser client could send any Origin it liked, so refusing would
    protect nothing. Same origin: the scheme is not compared, because TLS usually ends at a
    proxy in front of Parley (the page is https, the request reaching Parley is http);
    the host and port are. Otherwise the origin must be listed.
    """
    if origin is None:
        return True
    origin = normal_origin(origin)
    if origin in {normal_origin(o) for o in allowed}:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc == host.lower()


def client_address(peer: str | None, forwarded_for: str | None, hops: int) -> str:
    """The visitor's address for the per-IP limit. Behind `hops` proxies that each append to
    X-Forwarded-For, it is the entry that many from the end: what the outermost trusted proxy
    saw (entries before it are whatever the client sent, so never trusted). IPv6 addresses
    count per /64, the block one subscriber gets, so that rotating addresses within it does
    not escape the limit."""
    address = peer or "unknown"
    if hops:
        entries = [e.strip() for e in (forwarded_for or "").split(",") if e.strip()]
        if len(entries) >= hops:
            address = entries[-hops]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)
