"""Who may act at the support desk, through slack-bolt against the fake Slack: the support channel
must be private (or allowed otherwise), agents must be of Parley's own workspace (never a Slack
Connect guest) and, when configured, of the agent user groups; Resolve counts only in the
support channel. A refusal reaches only the person (an ephemeral notice) and the log."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from bot import messages
from bot.config import HandoffSettings
from bot.turns import ConversationKey
from tests.handoff.conftest import SUPPORT
from tests.slack.conftest import DEAD_LLM, serving, slack_settings
from tests.slack.fake import TEAM, FakeSlack, block_action, mention, message

CUSTOMER = "C0001"
OTHER_ORG = "T0OTHER"


def stack(make_settings, fake: FakeSlack, **handoff: Any):
    sections: dict[str, Any] = {
        "slack": slack_settings(fake),
        "handoff": HandoffSettings(_env_file=None, **{"slack_channel": SUPPORT, **handoff}),
    }
    return serving(make_settings(llm_url=DEAD_LLM, **sections), fake)


def texts(fake: FakeSlack, channel: str, ts: str | None) -> list[str]:
    return [m.text for m in fake.in_thread(channel, ts)]


async def hand_off(s, fake: FakeSlack, channel: str = SUPPORT):
    """A customer asks for a person; returns their mention and the ticket's head message."""
    asked = mention(CUSTOMER, "I want to talk to a person")
    await s.deliver(asked)
    head = await fake.wait_for(lambda: next(iter(fake.in_thread(channel, None)), None))
    await fake.wait_for(lambda: fake.in_thread(channel, head.ts))  # the transcript: a ticket now
    await fake.wait_for(lambda: messages.HANDED_OFF in texts(fake, CUSTOMER, asked["ts"]))
    return asked, head


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "channel, fix",
    [
        ({"private": False}, "PARLEY_HANDOFF_ALLOW_PUBLIC_CHANNEL=true"),
        ({"private": True, "ext_shared": True}, "shared with another organisation"),
        (None, "invite Parley to the channel"),  # Slack does not show it: channel_not_found
    ],
    ids=["public", "slack-connect", "unknown"],
)
async def test_the_desk_stays_off_unless_its_channel_is_private_and_slack_keeps_serving(
    make_settings, fake_slack, caplog, channel, fix
):
    caplog.set_level(logging.INFO)
    if channel is not None:
        fake_slack.add_channel(SUPPORT, "support", **channel)
    async with stack(make_settings, fake_slack) as s:
        assert not s.runtime.desks["slack"].reaches(None, "")  # no ticket goes to the default channel
        asked = mention(CUSTOMER, "I want to talk to a person")
        await s.deliver(asked)  # still answered: the bot says no person is reachable here
        await fake_slack.wait_for(lambda: messages.NO_AGENT in texts(fake_slack, CUSTOMER, asked["ts"]))
    assert fake_slack.in_thread(SUPPORT, None) == []  # no ticket in that channel
    [refusal] = [r for r in caplog.records if "support desk is OFF" in r.getMessage()]
    assert refusal.levelno == logging.ERROR and fix in refusal.getMessage()


async def test_a_public_support_channel_when_allowed(make_settings, fake_slack, caplog):
    caplog.set_level(logging.INFO)
    fake_slack.add_channel(SUPPORT, "support", private=False)
    async with stack(make_settings, fake_slack, allow_public_channel=True) as s:
        assert list(s.runtime.desks) == ["slack"]
        await hand_off(s, fake_slack)
    assert "allowed by PARLEY_HANDOFF_ALLOW_PUBLIC_CHANNEL" in logged(caplog)


async def test_only_people_of_parleys_workspace_act_as_agents(make_settings, fake_slack, caplog):
    caplog.set_level(logging.INFO)
    fake_slack.add_channel(SUPPORT, "support", private=True)
    fake_slack.add_user("UAGENT", "ann.k", display_name="Ann")
    fake_slack.add_user("UGUEST", "mallory", display_name="Mallory", team=OTHER_ORG)  # a Slack Connect guest
    fake_slack.add_user("USTRANGE", "eve", display_name="Eve", team=OTHER_ORG, stranger=True)
    async with stack(make_settings, fake_slack) as s:
        asked, head = await hand_off(s, fake_slack)
        # The guest's event says their workspace; another one's event does not (users.info does).
        await s.deliver(
            message(
                SUPPORT,
                "Refund approved, send your card number",
                user="UGUEST",
                thread_ts=head.ts,
                user_team=OTHER_ORG,
                team=OTHER_ORG,
            )
        )
        await s.deliver(message(SUPPORT, "I am support too", user="USTRANGE", thread_ts=head.ts))
        await s.send(
            {
                "payload": json.dumps(
                    dict(
                        block_action(head, action_id="parley_resolve", user="UGUEST"),
                        user={"id": "UGUEST", "team_id": OTHER_ORG},
                    )
                )
            },
            form=True,
        )
        # The people of the workspace still answer; what they write is the first thing the customer gets.
        await s.deliver(message(SUPPORT, "Hello, Ann here.", user="UAGENT", thread_ts=head.ts))
        relayed = messages.agent_reply("Ann", "Hello, Ann here.")
        await fake_slack.wait_for(lambda: len(texts(fake_slack, CUSTOMER, asked["ts"])) >= 2)
        assert texts(fake_slack, CUSTOMER, asked["ts"]) == [messages.HANDED_OFF, relayed]
        assert await s.runtime.tickets.ticket(ConversationKey("slack", TEAM, CUSTOMER, asked["ts"])) is not None
        notices = await fake_slack.wait_for(lambda: len(fake_slack.ephemeral) == 3 and fake_slack.ephemeral)
    assert sorted((n.user, n.channel, n.thread_ts, n.text) for n in notices) == [
        ("UGUEST", SUPPORT, head.ts, messages.AGENT_NOT_OURS),
        ("UGUEST", SUPPORT, head.ts, messages.AGENT_NOT_OURS),
        ("USTRANGE", SUPPORT, head.ts, messages.AGENT_NOT_OURS),
    ]
    log = logged(caplog)
    assert f"desk agent from UGUEST in {SUPPORT}:{head.ts} refused: from another workspace ({OTHER_ORG})" in log
    assert f"desk resolve from UGUEST in {SUPPORT}:{head.ts} refused: from another workspace ({OTHER_ORG})" in log
    assert f"desk agent from USTRANGE in {SUPPORT}:{head.ts} refused" in log


async def test_agent_groups_admit_their_members_only(make_settings, fake_slack, caplog):
    caplog.set_level(logging.INFO)
    fake_slack.add_channel(SUPPORT, "support", private=True)
    fake_slack.add_user("UAGENT", "ann.k", display_name="Ann")
    fake_slack.add_user("UBOB", "bob", display_name="Bob")  # of the workspace, in the channel, not an agent
    fake_slack.add_group("SAGENTS", "UAGENT")
    fake_slack.add_group("SLEADS")
    async with stack(make_settings, fake_slack, agent_groups=["SAGENTS", "SLEADS"]) as s:
        asked, head = await hand_off(s, fake_slack)
        await s.deliver(message(SUPPORT, "I'll take this one", user="UBOB", thread_ts=head.ts))
        await s.send({"payload": json.dumps(block_action(head, action_id="parley_resolve", user="UBOB"))}, form=True)
        await s.deliver(message(SUPPORT, "Hello, Ann here.", user="UAGENT", thread_ts=head.ts))
        await s.send({"payload": json.dumps(block_action(head, action_id="parley_resolve", user="UAGENT"))}, form=True)
        await fake_slack.wait_for(lambda: messages.HANDED_BACK in texts(fake_slack, CUSTOMER, asked["ts"]))
        assert texts(fake_slack, CUSTOMER, asked["ts"]) == [
            messages.HANDED_OFF,
            messages.agent_reply("Ann", "Hello, Ann here."),
            messages.HANDED_BACK,
        ]
        await fake_slack.wait_for(lambda: len(fake_slack.ephemeral) == 2)
    assert [(n.user, n.text) for n in fake_slack.ephemeral] == [("UBOB", messages.AGENT_NOT_IN_GROUP)] * 2
    assert "refused: not in the agent groups SAGENTS, SLEADS" in logged(caplog)
    # Read once per group for all four checks (kept for PARLEY_HANDOFF_AGENT_REFRESH seconds).
    assert sorted(c.args["usergroup"] for c in fake_slack.calls_to("usergroups.users.list")) == ["SAGENTS", "SLEADS"]


async def test_resolve_counts_only_in_the_support_channel(make_settings, fake_slack, caplog):
    # The support channel moved: a ticket of the old one cannot be resolved there any more.
    caplog.set_level(logging.INFO)
    fake_slack.add_user("UAGENT", "ann.k", display_name="Ann")
    fake_slack.add_channel("COLDSUP", "old-support", private=True)
    fake_slack.add_channel(SUPPORT, "support", private=True)
    async with stack(make_settings, fake_slack, slack_channel="COLDSUP") as s:
        asked, old_head = await hand_off(s, fake_slack, channel="COLDSUP")
    async with stack(make_settings, fake_slack) as s:
        pressed = await s.send(
            {"payload": json.dumps(block_action(old_head, action_id="parley_resolve", user="UAGENT"))}, form=True
        )
        assert pressed.status == 200
        await fake_slack.wait_for(
            lambda: fake_slack.ephemeral or messages.HANDED_BACK in texts(fake_slack, CUSTOMER, asked["ts"])
        )
        assert messages.HANDED_BACK not in texts(fake_slack, CUSTOMER, asked["ts"])
        [notice] = fake_slack.ephemeral
        assert (notice.user, notice.channel, notice.text) == ("UAGENT", "COLDSUP", messages.NOT_THE_DESK)
        assert await s.runtime.tickets.ticket(ConversationKey("slack", TEAM, CUSTOMER, asked["ts"])) is not None
    assert (
        f"desk resolve from UAGENT in COLDSUP:{old_head.ts} refused: pressed outside the support channel {SUPPORT}"
        in logged(caplog)
    )
