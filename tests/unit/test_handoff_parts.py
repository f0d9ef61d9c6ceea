"""Pure parts of handing off and feedback: the anger signal, Slack's desk and reaction payloads.
No servers. (Conversation links are each adapter's: tests/slack and tests/discord.)"""

from __future__ import annotations

import pytest

from adapters.slack.desk import escape
from adapters.slack.normalize import Identity, desk_message, resolve_action, vote_of
from bot.moderation.moderator import sounds_angry
from tests.slack.fake import BOT_USER, Posted, block_action, event_callback, message, reaction_added

ME = Identity(user_id=BOT_USER, bot_id="BPARLEY", team_id="T0001")


@pytest.mark.parametrize(
    "text, profane, angry",
    [
        ("this is useless", False, False),  # one complaint word is feedback, not anger
        ("THIS IS USELESS", False, True),  # shouted
        ("useless!! again", False, True),
        ("useless and a waste of my time", False, True),
        ("THIS IS GREAT!!!", False, False),  # shouting without a complaint
        ("I'm fed up, this is ridiculous", False, True),
        ("what a lovely day", True, True),  # swearing counts whatever the words
        ("OK", False, False),
    ],
)
def test_the_anger_signal_is_conservative(text, profane, angry):
    assert sounds_angry(text, profane=profane) is angry


def test_a_reply_in_a_support_thread_is_a_desk_message_and_resolve_is_recognised():
    parent = "1700000000.000100"
    reply = desk_message(
        event_callback(message("CSUP", "<@UPARLEY> On it &amp; more", user="UA", thread_ts=parent), event_id="Ev9"),
        ME,
        "CSUP",
    )
    assert reply is not None
    assert (reply.thread, reply.user, reply.text, reply.event_id, reply.command) == (
        f"CSUP:{parent}",
        "UA",
        "On it & more",
        "Ev9",
        "agent",
    )
    for typed in ("resolve", "!resolve", "Resolve.", "/parley resolve"):
        found = desk_message(event_callback(message("CSUP", typed, user="UA", thread_ts=parent)), ME, "CSUP")
        assert found is not None and found.command == "resolve", typed
    mention = desk_message(
        event_callback(dict(message("CSUP", "hi", user="UA", thread_ts=parent), type="app_mention")), ME, "CSUP"
    )
    assert mention is not None and mention.mention


@pytest.mark.parametrize(
    "event",
    [
        message("CSUP", "top level", user="UA"),  # not in a thread
        message("COTHER", "elsewhere", user="UA", thread_ts="1.1"),  # not the support channel
        message("CSUP", "a bot", user="UB", thread_ts="1.1", bot_id="B1"),
        message("CSUP", "Parley itself", user=BOT_USER, thread_ts="1.1"),
        message("CSUP", "edited", user="UA", thread_ts="1.1", subtype="message_changed"),
    ],
)
def test_what_is_not_a_desk_message(event):
    assert desk_message(event_callback(event), ME, "CSUP") is None


def test_a_resolve_button_press():
    ticket = Posted("CSUP", "1700000000.000200", None, "ticket")
    pressed = resolve_action(block_action(ticket, action_id="parley_resolve", user="UA"))
    assert pressed is not None and (pressed.thread, pressed.user, pressed.command) == (
        f"CSUP:{ticket.ts}",
        "UA",
        "resolve",
    )
    assert pressed.event_id.startswith("action:")
    assert resolve_action(block_action(ticket, action_id="something_else")) is None


def test_votes_are_thumbs_on_parleys_messages_by_people():
    up = vote_of(event_callback(reaction_added("C1", "1.2", reaction="thumbsup::skin-tone-2"), event_id="Ev1"), ME)
    assert up is not None and (up.team, up.message, up.user, up.vote, up.event_id) == (
        "T0001",
        "C1:1.2",
        "UALICE",
        "up",
        "Ev1",
    )
    assert vote_of(event_callback(reaction_added("C1", "1.2", reaction="-1")), ME).vote == "down"
    assert vote_of(event_callback(reaction_added("C1", "1.2", reaction="heart")), ME) is None
    assert vote_of(event_callback(reaction_added("C1", "1.2", user=BOT_USER)), ME) is None
    assert vote_of(event_callback(reaction_added("C1", "1.2", item_user="UBOB")), ME) is None


def test_customer_text_cannot_become_markup_in_the_support_channel():
    assert escape("<!channel> & <@U1> <https://x|y>") == "&lt;!channel&gt; &amp; &lt;@U1&gt; &lt;https://x|y&gt;"
