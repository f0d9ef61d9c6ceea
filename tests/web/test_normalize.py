"""The web chat's wire format: every malformed frame is a `BadFrame` with a code, never a crash;
good frames become the turns the dialogue manager expects."""

from __future__ import annotations

import json

import pytest

from adapters.web import normalize
from adapters.web.normalize import BadFrame, Hello, Press, Say, Vote
from adapters.web.tokens import new_visitor
from bot import messages
from bot.errors import InputRejected
from bot.reply import Choices, Offer
from bot.store.context import Message
from bot.turns import ASK_PERSON, CHOICE, CHOICES, Turn


def code_of(raw: str) -> str:
    with pytest.raises(BadFrame) as caught:
        normalize.parse_frame(raw)
    return caught.value.code


@pytest.mark.parametrize(
    "raw, code",
    [
        ("", "not_json"),
        ("hello", "not_json"),
        ("{'type': 'hello'}", "not_json"),
        ('{"type": "message", "id": "abcdefgh", "text": "hi"', "not_json"),
        ("[" * 200_000 + "]" * 200_000, "not_json"),  # deeper than the parser goes
        ('"message"', "not_object"),
        ("[]", "not_object"),
        ("null", "not_object"),
        ("42", "not_object"),
        ("{}", "unknown_type"),
        ('{"type": 7}', "unknown_type"),
        ('{"type": ["message"]}', "unknown_type"),
        ('{"type": "subscribe", "channel": "all"}', "unknown_type"),
        ('{"type": "hello", "token": 12}', "bad_field"),
        ('{"type": "hello", "token": {"visitor": "x"}}', "bad_field"),
        ('{"type": "message", "text": "hi"}', "bad_field"),
        ('{"type": "message", "id": 12345678, "text": "hi"}', "bad_field"),
        ('{"type": "message", "id": "short", "text": "hi"}', "bad_field"),
        ('{"type": "message", "id": "has spaces in it", "text": "hi"}', "bad_field"),
        ('{"type": "message", "id": "abcdefgh\\n", "text": "hi"}', "bad_field"),
        ('{"type": "message", "id": "' + "a" * 65 + '", "text": "hi"}', "bad_field"),
        ('{"type": "message", "id": "../../etc", "text": "hi"}', "bad_field"),
        ('{"type": "message", "id": "abcdefgh"}', "bad_field"),
        ('{"type": "message", "id": "abcdefgh", "text": null}', "bad_field"),
        ('{"type": "message", "id": "abcdefgh", "text": ["hi"]}', "bad_field"),
        ('{"type": "feedback", "answer": "abc", "vote": "up"}', "bad_field"),
        ('{"type": "feedback", "vote": "up"}', "bad_field"),
    ],
)
def test_malformed_frames(raw, code):
    assert code_of(raw) == code


def test_feedback_needs_a_real_vote():
    answer = f"{new_visitor()}:abcdefgh"
    for vote in ("sideways", "", None, 1, "UP"):
        assert code_of(json.dumps({"type": "feedback", "answer": answer, "vote": vote})) == "bad_field"
    assert normalize.parse_frame(json.dumps({"type": "feedback", "answer": answer, "vote": "down"})) == Vote(
        answer, "down"
    )


def test_good_frames_and_unknown_fields_ignored():
    assert normalize.parse_frame('{"type": "hello", "token": null}') == Hello(None)
    assert normalize.parse_frame('{"type": "hello"}') == Hello(None)
    assert normalize.parse_frame('{"type": "hello", "token": ""}') == Hello(None)
    assert normalize.parse_frame('{"type": "hello", "token": "v1.x", "lang": "de"}') == Hello("v1.x")
    frame = {"type": "message", "id": "0f9a1c2b3d4e5f60", "text": "Hallo \u00e9\u00e8 \U0001f44d", "extra": 1}
    assert normalize.parse_frame(json.dumps(frame)) == Say("0f9a1c2b3d4e5f60", frame["text"])


def test_the_message_id_survives_a_bad_text_so_the_widget_can_mark_that_message():
    with pytest.raises(BadFrame) as caught:
        normalize.parse_frame('{"type": "message", "id": "abcdefgh", "text": 5}')
    assert caught.value.id == "abcdefgh"


def test_text_checks_use_the_users_words_from_messages():
    normalize.check_text(Say("abcdefgh", "x" * 10), 10)
    with pytest.raises(InputRejected) as too_long:
        normalize.check_text(Say("abcdefgh", "x" * 11), 10)
    assert (too_long.value.reason, too_long.value.length, too_long.value.limit) == ("too_long", 11, 10)
    assert "11 characters" in messages.for_user(too_long.value) and "10" in messages.for_user(too_long.value)
    for blank in ("", "   ", "\n\t"):
        with pytest.raises(InputRejected) as empty:
            normalize.check_text(Say("abcdefgh", blank), 10)
        assert empty.value.reason == "empty"


def test_a_message_becomes_a_web_turn_whose_event_id_is_scoped_to_the_visitor():
    visitor = new_visitor()
    turn = normalize.to_turn(Say("abcdefgh", "where is my order?"), conversation=visitor, site="shop")
    assert (turn.platform, turn.tenant, turn.channel, turn.user, turn.thread) == ("web", "shop", visitor, visitor, "")
    assert turn.text == "where is my order?" and turn.command is None
    assert turn.event_id == f"{visitor}:abcdefgh"
    other = normalize.to_turn(Say("abcdefgh", "same id, other visitor"), conversation=new_visitor(), site="shop")
    assert other.event_id != turn.event_id


def test_talk_to_a_person_is_a_message_with_the_handoff_command_and_fixed_words():
    said = normalize.parse_frame(json.dumps({"type": "handoff", "id": "person-01", "text": "ignored words"}))
    assert said == Say("person-01", messages.ASK_FOR_PERSON, command=ASK_PERSON)
    visitor = new_visitor()
    turn = normalize.to_turn(said, conversation=visitor, site="shop")
    assert (turn.command, turn.text, turn.event_id) == ("handoff", messages.ASK_FOR_PERSON, f"{visitor}:person-01")
    for bad in ({"type": "handoff"}, {"type": "handoff", "id": "x"}, {"type": "handoff", "id": 7}):
        assert code_of(json.dumps(bad)) == "bad_field"


def test_feedback_becomes_a_feedback_turn_about_one_of_the_visitors_own_answers():
    visitor = new_visitor()
    answer = f"{visitor}:abcdefgh"
    turn = normalize.feedback_turn(Vote(answer, "up", "click-0001"), conversation=visitor, site="shop")
    assert (turn.command, turn.text, turn.reply_to, turn.channel, turn.tenant) == (
        "feedback",
        "up",
        answer,
        visitor,
        "shop",
    )
    resent = normalize.feedback_turn(Vote(answer, "up", "click-0001"), conversation=visitor, site="shop")
    again = normalize.feedback_turn(Vote(answer, "up", "click-0002"), conversation=visitor, site="shop")
    assert resent.event_id == turn.event_id != again.event_id  # a resend is one event, a new click another
    assert turn.event_id not in (
        answer,
        normalize.feedback_turn(Vote(answer, "up"), conversation=visitor, site="shop").event_id,
    )
    with pytest.raises(BadFrame):
        normalize.feedback_turn(Vote(f"{new_visitor()}:abcdefgh", "up"), conversation=visitor, site="shop")


def test_feedback_frame_with_and_without_a_click_id():
    answer = f"{new_visitor()}:abcdefgh"
    frame = {"type": "feedback", "answer": answer, "vote": "up"}
    assert normalize.parse_frame(json.dumps(frame)) == Vote(answer, "up", None)
    assert normalize.parse_frame(json.dumps({**frame, "id": "click-0001"})) == Vote(answer, "up", "click-0001")
    for bad in (5, "short", "has space!"):
        assert code_of(json.dumps({**frame, "id": bad})) == "bad_field"


def test_frames_out_are_valid_json_even_for_text_that_is_not_valid_unicode():
    frame = normalize.encode(normalize.done("v:abcdefgh", "bad \udcff byte, \u00e9"))
    assert frame.isascii()
    assert json.loads(frame) == {"type": "done", "id": "v:abcdefgh", "text": "bad \udcff byte, \u00e9"}
    hist = normalize.welcome(
        "tok", resumed=True, messages=[Message("user", "q", 1), Message("assistant", "a", 1)], person=True
    )
    assert hist["history"] == [{"role": "user", "text": "q"}, {"role": "assistant", "text": "a"}]
    assert hist["person"] is True
    err = normalize.error("rate_limited", "wait", id="abcdefgh", retry_after=12.345)
    assert err == {"type": "error", "code": "rate_limited", "text": "wait", "id": "abcdefgh", "retry_after": 12.3}


CALL = "0123456789abcdef"
PRESS = {"type": "choice", "call": CALL, "choice": "confirm", "id": "press-0001"}


def test_a_choice_frame_is_a_press():
    assert normalize.parse_frame(json.dumps(PRESS)) == Press(CALL, "confirm", "press-0001")
    cancel = {**PRESS, "choice": "cancel", "unknown": [1]}  # unknown fields are ignored, as elsewhere
    assert normalize.parse_frame(json.dumps(cancel)) == Press(CALL, "cancel", "press-0001")


@pytest.mark.parametrize(
    "changes, code",
    [
        ({"call": "0123456789ABCDEF"}, "bad_call"),  # lowercase hex only
        ({"call": "0123456789abcde"}, "bad_call"),  # 15
        ({"call": "0123456789abcdef0"}, "bad_call"),  # 17
        ({"call": "0123456789abcdeg"}, "bad_call"),
        ({"call": "0123456789abcdef\n"}, "bad_call"),
        ({"call": " 0123456789abcdef"}, "bad_call"),
        ({"call": "../../0123456789"}, "bad_call"),
        ({"call": 123456789012345678}, "bad_call"),
        ({"call": ["0123456789abcdef"]}, "bad_call"),
        ({"call": None}, "bad_call"),
        ({"choice": "yes"}, "bad_choice"),
        ({"choice": "Confirm"}, "bad_choice"),
        ({"choice": "confirmed"}, "bad_choice"),
        ({"choice": ""}, "bad_choice"),
        ({"choice": ["confirm"]}, "bad_choice"),
        ({"choice": {"confirm": 1}}, "bad_choice"),
        ({"choice": True}, "bad_choice"),
        ({"choice": None}, "bad_choice"),
    ],
)
def test_malformed_choice_frames_name_the_press(changes, code):
    frame = {**PRESS, **changes}
    with pytest.raises(BadFrame) as caught:
        normalize.parse_frame(json.dumps(frame))
    assert (caught.value.code, caught.value.id) == (code, "press-0001")


def test_a_choice_frame_without_a_good_id_is_refused():
    for bad in (None, 5, "short", "has space!", "a" * 65, ["press-0001"]):
        frame = {**PRESS, "id": bad} if bad is not None else {k: v for k, v in PRESS.items() if k != "id"}
        with pytest.raises(BadFrame) as caught:
            normalize.parse_frame(json.dumps(frame))
        assert (caught.value.code, caught.value.id) == ("bad_field", None)


def test_a_press_becomes_a_choice_turn_in_the_visitors_conversation():
    visitor = new_visitor()
    turn = normalize.choice_turn(Press(CALL, "cancel", "press-0001"), conversation=visitor, site="shop")
    # Like a feedback turn: the visitor's conversation, a desk-only command no typed text can make.
    feedback = normalize.feedback_turn(Vote(f"{visitor}:abcdefgh", "up"), conversation=visitor, site="shop")
    assert (turn.platform, turn.tenant, turn.channel, turn.user, turn.thread) == (
        feedback.platform,
        feedback.tenant,
        feedback.channel,
        feedback.user,
        feedback.thread,
    )
    assert (turn.command, turn.text, turn.reply_to) == (CHOICE, "cancel", CALL) and turn.text in CHOICES
    assert turn.event_id == f"{visitor}:press-0001" == normalize.event_id(visitor, "press-0001")
    resent = normalize.choice_turn(Press(CALL, "cancel", "press-0001"), conversation=visitor, site="shop")
    again = normalize.choice_turn(Press(CALL, "cancel", "press-0002"), conversation=visitor, site="shop")
    other = normalize.choice_turn(Press(CALL, "cancel", "press-0001"), conversation=new_visitor(), site="shop")
    assert resent.event_id == turn.event_id != again.event_id  # a resend is one event, a new press another
    assert other.event_id != turn.event_id and other.user != turn.user
    assert Turn.from_dict(turn.to_dict()) == turn  # through the inbox unchanged
    # A typed message is never a choice, whatever it says.
    assert normalize.to_turn(Say("abcdefgh", "confirm"), conversation=visitor, site="shop").command is None


def test_choice_and_settled_frames_out():
    offer = Offer(CALL, 'open a ticket titled "<img src=x onerror=alert(1)>"', 1_700_000_000.5)
    frame = normalize.encode(normalize.choice(offer, reply_to="v:abcdefgh"))
    assert frame.isascii()  # the words go as they are: the widget shows them as text
    assert json.loads(frame) == {
        "type": "choice",
        "call": CALL,
        "what": offer.what,
        "expires": 1_700_000_000.5,
        "reply_to": "v:abcdefgh",
    }
    for outcome in ("confirmed", "cancelled", "expired"):
        assert normalize.settled(CALL, outcome) == {"type": "settled", "call": CALL, "outcome": outcome}


def test_the_web_sink_offers_buttons():
    from adapters.web.fanout import LocalFanout
    from adapters.web.sink import WebSink

    turn = normalize.to_turn(Say("abcdefgh", "hi"), conversation=new_visitor(), site="shop")
    assert isinstance(WebSink(LocalFanout(), turn), Choices)


@pytest.mark.parametrize(
    "origin, host, allowed, ok",
    [
        (None, "parley.example", [], True),  # not a browser
        ("https://parley.example", "parley.example", [], True),  # same origin (TLS ends at the proxy)
        ("http://127.0.0.1:8080", "127.0.0.1:8080", [], True),
        ("http://127.0.0.1:8081", "127.0.0.1:8080", [], False),  # another port is another origin
        ("https://evil.example", "parley.example", [], False),
        ("https://parley.example.evil.example", "parley.example", [], False),
        ("https://shop.example", "parley.example", ["https://shop.example"], True),
        ("https://Shop.Example", "parley.example", ["https://shop.example/"], True),
        ("http://shop.example", "parley.example", ["https://shop.example"], False),  # scheme counts when listed
        ("https://shop.example:8443", "parley.example", ["https://shop.example"], False),
        ("null", "parley.example", [], False),  # sandboxed frames and file:// pages
        ("file://", "parley.example", [], False),
        ("", "parley.example", [], False),
    ],
)
def test_origin_allowed(origin, host, allowed, ok):
    assert normalize.origin_allowed(origin, host, allowed) is ok


@pytest.mark.parametrize(
    "peer, forwarded, hops, address",
    [
        ("203.0.113.7", None, 0, "203.0.113.7"),
        ("203.0.113.7", "198.51.100.1", 0, "203.0.113.7"),  # not behind a proxy: the header is the client's lie
        ("10.0.0.2", "198.51.100.1", 1, "198.51.100.1"),
        ("10.0.0.2", "1.1.1.1, 198.51.100.1", 1, "198.51.100.1"),  # the client prepended a fake entry
        ("10.0.0.2", "1.1.1.1, 198.51.100.1, 10.0.0.9", 2, "198.51.100.1"),
        ("10.0.0.2", None, 1, "10.0.0.2"),  # reached directly, bypassing the proxy
        ("2001:db8:1:2:aaaa::1", None, 0, "2001:db8:1:2::/64"),
        ("10.0.0.2", "2001:db8:1:2:bbbb::9", 1, "2001:db8:1:2::/64"),
        (None, None, 0, "unknown"),
        ("10.0.0.2", "not-an-ip", 1, "not-an-ip"),
    ],
)
def test_client_address(peer, forwarded, hops, address):
    assert normalize.client_address(peer, forwarded, hops) == address
