"""A channel's mention rule from its profile, through slack-bolt against the fake Slack: with
"always", every message in the channel is answered in its thread, mention or not; elsewhere
only mentions, DMs and Parley's threads are, and a change made at run time applies at once."""

from __future__ import annotations

from pathlib import Path

from bot.config import TenantsSettings
from tests.slack.conftest import serving, slack_settings
from tests.slack.fake import TEAM, FakeSlack, message
from tests.standin import ScriptedEngine

ANSWER = "We open at nine."


async def test_always_answers_every_message_of_its_channel(fake_slack: FakeSlack, make_settings, tmp_path: Path):
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[tenants."{TEAM}".channels."C0ALWAYS"]\nmention_rule = "always"\n')
    async with ScriptedEngine(ANSWER).serving() as url:
        settings = make_settings(
            llm_url=url, slack=slack_settings(fake_slack), tenants=TenantsSettings(_env_file=None, file=tenants)
        )
        async with serving(settings, fake_slack) as stack:
            quiet = message("C0QUIET", "just chatting, not for the bot")
            await stack.deliver(quiet)
            asked = message("C0ALWAYS", "When do you open?")
            await stack.deliver(asked)
            context = await stack.answered("C0ALWAYS", asked["ts"], timeout=60)

            # The quiet channel answers everything too once an admin says so, at run time.
            await stack.runtime.profiles.set(TEAM, "C0QUIET", "mention_rule", "always", by="UADMIN")
            later = message("C0QUIET", "and on Sundays?")
            await stack.deliver(later)
            await stack.answered("C0QUIET", later["ts"], timeout=60)
    assert [m.content for m in context.messages] == ["When do you open?", ANSWER]
    assert [p.text for p in fake_slack.in_thread("C0ALWAYS", asked["ts"])] == [ANSWER]
    assert not fake_slack.in_thread("C0QUIET", quiet["ts"])  # before the change: not for Parley
