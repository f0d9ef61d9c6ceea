"""Slack payloads -> turns, on payloads shaped like the ones Slack sends (recorded-style)."""

from __future__ import annotations

import pytest

from adapters.slack.normalize import (
    Addressed,
    Identity,
    PaneThread,
    clean_text,
    conversation_link,
    feedback_of,
    from_command,
    from_event,
    pane_thread,
)
from adapters.slack.sink import feedback_block
from bot.turns import ConversationKey
from tests.slack.fake import Posted, feedback_press

ME = Identity(user_id="U0PARLEY", bot_id="B0PARLEY", team_id="T0TEAM")


def callback(event: dict, *, event_id: str = "Ev0AAA111", team: str = "T0TEAM") -> dict:
    return {
        "token": "x",
        "team_id": team,
        "api_app_id": "A0APP",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": 1718000000,
    }


MENTION = {
    "client_msg_id": "7a3c6d1e-0000-4c1b-9a52-3f0f3c0e2b11",
    "type": "app_mention",
    "text": "<@U0PARLEY> what does <@U0BOB> mean by &lt;p99&gt; &amp; p50?",
    "user": "U0ALICE",
    "ts": "1718000000.123456",
    "team": "T0TEAM",
    "channel": "C0GENERAL",
    "event_ts": "1718000000.123456",
    "blocks": [{"type": "rich_text", "block_id": "x", "elements": []}],
}


def test_top_level_mention_starts_a_thread_on_itself():
    incoming = from_event(callback(MENTION), ME)
    assert incoming is not None and incoming.route is Addressed.MENTION
    turn = incoming.turn
    assert (turn.platform, turn.tenant, turn.channel, turn.thread) == (
        "slack",
        "T0TEAM",
        "C0GENERAL",
        "1718000000.123456",
    )
    assert turn.event_id == "Ev0AAA111" and turn.user == "U0ALICE" and turn.reply_to == "1718000000.123456"
    assert turn.text == "what does <@U0BOB> mean by <p99> & p50?"  # own mention gone, Bob's kept
    assert turn.command is None and turn.at == pytest.approx(1718000000.123456)
    # The way back to the user's workspace outlives the turn; the mentions it may repeat do not.
    assert turn.address == {"user_team": "T0TEAM"} and turn.handle == {"mentions": "U0BOB U0PARLEY"}


def test_mention_inside_a_thread_continues_that_thread():
    event = {**MENTION, "ts": "1718000100.000200", "thread_ts": "1718000000.000100"}
    assert from_event(callback(event), ME).turn.thread == "1718000000.000100"


def test_message_copy_of_a_mention_is_left_to_the_app_mention():
    # Slack sends a `message` event too for a channel message that mentions the app.
    event = {**MENTION, "type": "message", "channel_type": "channel"}
    assert from_event(callback(event), ME) is None


def test_thread_reply_without_mention_is_a_thread_candidate():
    event = {
        "type": "message",
        "text": "and in French?",
        "user": "U0ALICE",
        "ts": "1718000200.000300",
        "thread_ts": "1718000000.123456",
        "parent_user_id": "U0ALICE",
        "channel": "C0GENERAL",
        "event_ts": "1718000200.000300",
        "channel_type": "channel",
        "team": "T0TEAM",
    }
    incoming = from_event(callback(event), ME)
    assert incoming.route is Addressed.THREAD and incoming.turn.thread == "1718000000.123456"


def test_top_level_channel_message_without_mention_is_ignored():
    event = {
        "type": "message",
        "text": "lunch?",
        "user": "U0ALICE",
        "ts": "1718000300.000400",
        "channel": "C0GENERAL",
        "event_ts": "1718000300.000400",
        "channel_type": "channel",
    }
    assert from_event(callback(event), ME) is None


def test_dm_is_one_conversation_per_dm_or_per_thread():
    dm = {
        "type": "message",
        "text": "hi",
        "user": "U0ALICE",
        "ts": "1718000400.000500",
        "channel": "D0ALICE",
        "event_ts": "1718000400.000500",
        "channel_type": "im",
    }
    incoming = from_event(callback(dm), ME)
    assert incoming.route is Addressed.DIRECT and incoming.turn.thread == "" and incoming.turn.channel == "D0ALICE"
    threaded = {**dm, "ts": "1718000500.000600", "thread_ts": "1718000400.000500"}
    assert from_event(callback(threaded), ME).turn.thread == "1718000400.000500"
    # A mention in a DM arrives as a message event too; the app_mention copy is not answered.
    assert from_event(callback({**MENTION, "channel": "D0ALICE"}), ME) is None


@pytest.mark.parametrize(
    "change",
    [
        {"user": "U0PARLEY"},  # Parley's own message
        {"bot_id": "B0OTHER", "subtype": "bot_message"},  # another bot
        {"bot_id": "B0OTHER"},  # a bot posting as a user-like message
        {"subtype": "message_changed"},
        {"subtype": "message_deleted"},
        {"subtype": "channel_join", "text": "<@U0ALICE> has joined the channel"},
        {"subtype": "channel_topic"},
    ],
)
def test_not_a_person_writing_is_ignored(change):
    event = {
        "type": "message",
        "text": "hello",
        "user": "U0ALICE",
        "ts": "1718000600.000700",
        "channel": "D0ALICE",
        "event_ts": "1718000600.000700",
        "channel_type": "im",
        **change,
    }
    assert from_event(callback(event), ME) is None


def test_message_changed_has_no_user_and_is_ignored():
    event = {
        "type": "message",
        "subtype": "message_changed",
        "hidden": True,
        "channel": "D0ALICE",
        "channel_type": "im",
        "ts": "1718000700.000800",
        "event_ts": "1718000700.000800",
        "message": {"type": "message", "user": "U0ALICE", "text": "edited", "ts": "1718000600.000700"},
    }
    assert from_event(callback(event), ME) is None


def test_file_without_text_is_marked():
    event = {
        "type": "message",
        "subtype": "file_share",
        "text": "",
        "user": "U0ALICE",
        "ts": "1718000800.000900",
        "channel": "D0ALICE",
        "channel_type": "im",
        "event_ts": "1718000800.000900",
        "files": [{"id": "F0FILE", "name": "diagram.png", "mimetype": "image/png"}],
    }
    incoming = from_event(callback(event), ME)
    assert incoming.no_text and incoming.turn.text == ""
    with_text = from_event(callback({**event, "text": "what is in this picture?"}), ME)
    assert not with_text.no_text and with_text.turn.text == "what is in this picture?"


def test_help_and_reset_said_to_parley_are_commands():
    assert from_event(callback({**MENTION, "text": "<@U0PARLEY>  Reset "}), ME).turn.command == "reset"
    assert from_event(callback({**MENTION, "text": "<@U0PARLEY> help"}), ME).turn.command == "help"
    assert from_event(callback({**MENTION, "text": "<@U0PARLEY> help me with SQL"}), ME).turn.command is None


def test_tenant_is_the_team_so_workspaces_never_share():
    a = from_event(callback(MENTION, team="T0ONE"), ME).turn
    b = from_event(callback(MENTION, team="T0TWO"), ME).turn
    assert a.key != b.key


def test_slash_command():
    body = {
        "token": "x",
        "team_id": "T0TEAM",
        "team_domain": "acme",
        "channel_id": "D0ALICE",
        "channel_name": "directmessage",
        "user_id": "U0ALICE",
        "user_name": "alice",
        "command": "/parley",
        "text": " reset ",
        "api_app_id": "A0APP",
        "response_url": "https://hooks.slack.com/commands/T0TEAM/1/abc",
        "trigger_id": "123.456.abc",
    }
    turn = from_command(body)
    assert (turn.command, turn.channel, turn.thread, turn.tenant) == ("reset", "D0ALICE", "", "T0TEAM")
    assert turn.handle["response_url"] == body["response_url"] and turn.event_id == "command:123.456.abc"
    assert from_command({**body, "text": ""}).command == "help"
    assert from_command({**body, "text": "what is love"}).command == "help"


def test_clean_text_keeps_named_mentions_readable():
    assert clean_text("<@U0PARLEY|parley> ask <@U0BOB|bob>", "U0PARLEY") == "ask <@U0BOB>"


def test_a_ticket_links_to_the_conversation_and_its_thread():
    assert (
        conversation_link(ConversationKey("slack", "T1", "C1", "1.2"))
        == "https://app.slack.com/client/T1/C1/thread/C1-1.2"
    )
    assert conversation_link(ConversationKey("slack", "T1", "D1")) == "https://app.slack.com/client/T1/D1"


def test_a_feedback_press_is_a_vote_on_the_message_it_is_on():
    answer = Posted("C0001", "1718000001.000200", "1718000000.123456", "An answer.", blocks=[feedback_block()])
    vote = feedback_of(feedback_press(answer, positive=False, user="U0BOB"), ME)
    assert vote is not None
    assert (vote.team, vote.message, vote.user, vote.vote, vote.via) == (
        "T0001",
        "C0001:1718000001.000200",
        "U0BOB",
        "down",
        "button",
    )
    assert vote.event_id.startswith("feedback:")
    forged = feedback_press(answer, positive=True)
    forged["actions"][0]["value"] = "ten"
    other = feedback_press(answer, positive=True)
    other["actions"][0]["action_id"] = "someone_elses"
    assert feedback_of(forged, ME) is None and feedback_of(other, ME) is None
    assert feedback_of({"type": "block_actions"}, ME) is None


@pytest.mark.parametrize(
    "thread",
    [
        {},
        {"channel_id": "D0042"},
        {"channel_id": 42, "thread_ts": "1.2"},
        {"channel_id": "D0042", "thread_ts": ["1.2"]},
    ],
)
def test_a_pane_event_without_its_thread_is_none(thread):
    body = callback({"type": "assistant_thread_started", "assistant_thread": thread})
    assert pane_thread(body, ME.team_id) is None


def test_a_pane_event_names_its_thread_and_the_channel_in_view():
    thread = {"user_id": "U0ALICE", "channel_id": "D0042", "thread_ts": "1.2", "context": {"channel_id": "C0GEN"}}
    found = pane_thread(callback({"type": "assistant_thread_started", "assistant_thread": thread}), ME.team_id)
    assert found == PaneThread(tenant="T0TEAM", channel="D0042", thread_ts="1.2", user="U0ALICE", viewing="C0GEN")
    thread["context"] = {}  # not looking at any channel
    changed = pane_thread(callback({"type": "assistant_thread_context_changed", "assistant_thread": thread}), "")
    assert changed is not None and changed.viewing == ""
